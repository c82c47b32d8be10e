"""Shared helpers for the side-by-side benchmarks: timing, peak memory, process isolation, machine info, JSON.

Every benchmark measures each side (ours and a peer) the same way:
- `SideProcess(factory, ...)`: one side in a fresh spawned interpreter, so that its peak memory is its own and one
  side's thread pools and allocator state cannot slow the other; `run_isolated(fn, ...)` for a single call.
- `time_interleaved({side: call})`: wall times of each side's blocking calls after warmup, in alternating rounds so
  that a shared machine's changing load hits all sides alike; `time_call(fn)` for one side. Both record how busy
  the machine was with other processes, so that a contaminated figure shows as one.
- `PeakRSS`: the peak resident set of this process over a `with` block (Linux resets the high-water mark through
  /proc/self/clear_refs; elsewhere a sampling thread stands in); `peak_rss_bytes()` stays the lifetime peak.
- `environment_info(packages)` and `write_json(path, record)` make the result file self-describing and atomic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import multiprocessing
import os
import pathlib
import platform
import shlex
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Self

from lsi.self_improve.manifest import package_versions

MIB = 1024 * 1024


def timed_call(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) of one call of `fn`, which must block until done."""
    cpu_start = time.process_time()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed calls (see `summarize_times`).

    `fn` must block until its result is ready (`jax.block_until_ready`, or a synchronous torch call).
    """
    return time_interleaved({"fn": lambda: timed_call(fn)}, warmup=warmup, repeats=repeats)["fn"]


def time_interleaved(calls: dict[str, Callable[[], tuple[float, float]]], warmup: int = 1, repeats: int = 3,
                     settle: dict[str, Callable[[], Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Times several sides in alternating rounds (A B, B A, A B, ...) after `warmup` untimed calls of each.

    Each callable runs one blocking call and returns its (wall_s, cpu_s), measured where it ran (`timed_call`, in
    this process or in a `SideProcess`). Alternating means that a change in machine load during the run, common on a
    shared machine, hits every side alike instead of only the one that ran last. `settle[name]`, where given, runs
    untimed right before each of that side's timed calls (and outside the machine-load reading): for sides whose
    call is slower right after another side's.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    busy: dict[str, list[float | None]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            if settle and name in settle:
                settle[name]()
            busy_start = machine_busy_seconds()
            wall, cpu = calls[name]()
            busy_end = machine_busy_seconds()
            walls[name].append(wall)
            cpus[name].append(cpu)
            busy[name].append(None if busy_start is None or busy_end is None else busy_end - busy_start)
    return {name: summarize_times(walls[name], cpus[name], busy[name], warmup) for name in names}


def summarize_times(times: list[float], cpu_times: list[float], machine_busy: list[float | None], warmup: int
                    ) -> dict[str, Any]:
    """Median, min, max and all wall times, and how clean the measurement was.

    `cpu_utilization` is the measured process's CPU seconds (all threads) per wall second; `other_processes_cores`
    the average number of cores other processes kept busy meanwhile (machine-wide busy CPU seconds during each call,
    from /proc/stat, less the call's own; near 0 on a quiet machine; None where the calls were too short for the
    kernel's 10 ms accounting). On a shared machine, trust a comparison only where it is near 0.
    """
    def other_cores(busy: list[float | None], cpu: list[float], wall: list[float]) -> float | None:
        if any(b is None for b in busy) or sum(wall) < _MIN_ACCOUNTED_S:
            return None
        return min(max(0.0, (sum(busy) - sum(cpu)) / sum(wall)), float(os.cpu_count() or 1))

    return {
        "warmup": warmup,
        "repeats": len(times),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "cpu_s": cpu_times,
        "cpu_utilization": sum(cpu_times) / sum(times),
        "other_processes_cores": other_cores(machine_busy, cpu_times, times),
        "other_processes_cores_per_call": [other_cores([b], [c], [w]) for b, c, w in zip(machine_busy, cpu_times, times)],
    }


_MIN_ACCOUNTED_S = 1.0  # /proc/stat counts in clock ticks (10 ms) per core: shorter spans give no usable share


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user and nice]
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def machine_busy_cores(interval_s: float = 1.0) -> float | None:
    """Average number of busy cores over the next `interval_s` seconds (this process is idle meanwhile)."""
    start = machine_busy_seconds()
    time.sleep(interval_s)
    end = machine_busy_seconds()
    return None if start is None or end is None else (end - start) / interval_s


def wait_until_quiet(max_busy_cores: float = 0.2, timeout_s: float = 0.0, interval_s: float = 2.0) -> dict[str, Any]:
    """Waits (up to `timeout_s`) until other processes keep fewer than `max_busy_cores` cores busy.

    Returns what was seen: seconds waited and the last busy-core reading (timeout_s=0 just takes one reading).
    """
    start = time.perf_counter()
    busy = machine_busy_cores(interval_s)
    while busy is not None and busy >= max_busy_cores and time.perf_counter() - start < timeout_s:
        busy = machine_busy_cores(interval_s)
    return {"waited_s": time.perf_counter() - start, "busy_cores": busy, "threshold": max_busy_cores,
            "quiet": busy is not None and busy < max_busy_cores}


def throughput(items: float, timing: dict[str, Any]) -> dict[str, float]:
    """Items per second at the median, best (min time) and worst (max time) of a `time_call` result."""
    return {
        "median": items / timing["median_s"],
        "best": items / timing["min_s"],
        "worst": items / timing["max_s"],
    }


# --- memory -------------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil  # noqa: PLC0415  (only off Linux)

    return psutil.Process().memory_info().rss


# The highest kernel high-water mark seen before `_reset_peak_rss` cleared it: the process's lifetime peak survives.
_PEAK_BEFORE_RESETS = 0


def peak_rss_bytes() -> int:
    """Peak resident set of this process since it started (also across `PeakRSS` blocks, which reset the kernel's)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return max(kib * 1024, _PEAK_BEFORE_RESETS)
    import resource  # noqa: PLC0415

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB


def _reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark (Linux >= 4.0: writing 5 to clear_refs); False where that is not possible."""
    global _PEAK_BEFORE_RESETS
    before = _status_kib("VmHWM")
    if before is None:
        return False
    _PEAK_BEFORE_RESETS = max(_PEAK_BEFORE_RESETS, before * 1024)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakRSS:
    """Peak resident set of this process inside a `with` block, in `self.peak_bytes` (and `start_bytes`).

    On Linux the kernel's own high-water mark is reset on entry, so the figure is exact and costs nothing. Elsewhere a
    thread samples RSS every `interval_s`, which can miss short spikes (`self.method` says which was used).
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.start_bytes = 0
        self.peak_bytes = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start_bytes = current_rss_bytes()
        if _reset_peak_rss():
            self.method = "VmHWM"
        else:
            self.method = "sampled"
            self.peak_bytes = self.start_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
        else:
            self.peak_bytes = _status_kib("VmHWM") * 1024
        global _PEAK_BEFORE_RESETS
        # The kernel's RSS counters are per-thread batched (tens of pages): keep the lifetime peak >= this block's.
        _PEAK_BEFORE_RESETS = max(_PEAK_BEFORE_RESETS, self.peak_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {"start_mib": self.start_bytes / MIB, "peak_mib": self.peak_bytes / MIB, "method": self.method}


# --- process isolation --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[None]:
    """Sets `env` in os.environ for the block (a spawned child inherits it at start), then restores it."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    try:
        os.environ.update(env or {})
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _side_main(conn: Any, factory: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        side = factory(*args, **kwargs)
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    while True:
        message = conn.recv()
        if message is None:
            conn.send(("ok", peak_rss_bytes()))
            return
        method, method_args, method_kwargs = message
        try:
            conn.send(("ok", getattr(side, method)(*method_args, **method_kwargs)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class SideProcess:
    """One benchmark side in its own spawned Python process, so that its peak memory, imports, thread pools and
    allocator are its own.

    `SideProcess(factory, *args)` builds `factory(*args)` there (a top-level class or function: spawn imports it by
    module path, so a script needs an `if __name__ == "__main__"` guard); `call("method", ...)` runs one of that
    object's methods there and returns its (picklable) result; `close()` ends the process and returns its lifetime
    peak RSS in bytes. `env` entries are in the child's environment from its start (XLA_FLAGS, OMP_NUM_THREADS...).
    Errors in the child are raised here as RuntimeError carrying the child's traceback.
    """

    def __init__(self, factory: Callable[..., Any], *args: Any, env: dict[str, str] | None = None, **kwargs: Any):
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        with _environment(env):
            self._process = context.Process(target=_side_main, args=(child_conn, factory, args, kwargs), daemon=True)
            self._process.start()
        child_conn.close()
        self._receive()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._conn.send((method, args, kwargs))
        return self._receive()

    def close(self) -> int:
        self._conn.send(None)
        peak = self._receive()
        self._process.join()
        return peak

    def _receive(self) -> Any:
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the benchmark process died (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"in the benchmark process:\n{value}")
        return value

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def run_isolated(fn: Callable[..., Any], *args: Any, env: dict[str, str] | None = None, **kwargs: Any
                 ) -> tuple[Any, int]:
    """`fn(*args, **kwargs)` in a fresh spawned process (see `SideProcess`): (its result, the process's peak RSS)."""
    side = SideProcess(functools.partial, _call, fn, args, kwargs, env=env)
    with side:
        value = side.call("__call__")
        return value, side.close()


# --- environment --------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")) -> list[str]:
    """Which of the SIMD features that matter for matmul speed the CPU reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which cgroups and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def command_line() -> str:
    """The command that started this process, shell-quoted, as a user would retype it."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def environment_info(packages: tuple[str, ...], env_vars: tuple[str, ...] = ()) -> dict[str, Any]:
    """Machine, software and invocation details for a result file."""
    try:
        total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total_memory = None
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "cwd": os.getcwd(),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cpu_count": os.cpu_count(),
            "usable_cores": usable_cores(),
            "memory_gib": None if total_memory is None else round(total_memory / 1024**3, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "packages": package_versions(packages),
        "env": {name: os.environ.get(name) for name in env_vars},
    }


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> pathlib.Path:
    """Writes `record` as indented JSON atomically (temp file, then rename); creates parent directories."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned columns (floats to 4 significant digits)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    cells = [header] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
