"""Shared helpers for the side-by-side benchmarks: timing, peak memory, process isolation, machine info, JSON.

Every benchmark measures each side (ours and a peer) the same way:
- `time_call(fn, warmup, repeats)`: wall times of `fn()` after warmup calls; `fn` must block until its result is
  ready (`jax.block_until_ready`, or a synchronous torch call).
- `run_isolated(fn, ...)`: runs `fn` in a fresh spawned interpreter, so that each side's peak memory is its own and
  one side's thread pools and allocator state cannot slow the other.
- `PeakRSS`: the peak resident set of this process over a `with` block (Linux resets the high-water mark through
  /proc/self/clear_refs; elsewhere a sampling thread stands in); `peak_rss_bytes()` stays the lifetime peak.
- `environment_info(packages)` and `write_json(path, record)` make the result file self-describing and atomic.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import importlib.metadata
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
from typing import Any, Callable

MIB = 1024 * 1024


def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed calls; median, min, max and all times.

    Also the CPU seconds this process used per call (all its threads): `cpu_utilization` near the number of cores
    means the call had the machine; well below it, other processes took cores or the work did not parallelise.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    load_before = _load_average()
    for _ in range(repeats):
        cpu_start = time.process_time()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "warmup": warmup,
        "repeats": repeats,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "cpu_s": cpu_times,
        "cpu_utilization": sum(cpu_times) / sum(times),
        "load_average_1min": {"before": load_before, "after": _load_average()},
    }


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


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

    def __enter__(self) -> "PeakRSS":
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

    def __exit__(self, *exc: Any) -> None:
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

@dataclasses.dataclass
class IsolatedResult:
    value: Any
    process_peak_rss_bytes: int  # the child's peak RSS over its whole life (imports, loading and work)
    wall_s: float  # including interpreter start and imports


def _call_and_measure(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, int]:
    value = fn(*args, **kwargs)
    return value, peak_rss_bytes()


def run_isolated(fn: Callable[..., Any], *args: Any, env: dict[str, str] | None = None, **kwargs: Any
                 ) -> IsolatedResult:
    """`fn(*args, **kwargs)` in a fresh spawned Python process; its return value must pickle.

    `fn` must be importable by module path (a top-level function; a script needs an `if __name__ == "__main__"`
    guard). `env` entries are set in this process's environment while the child starts (the child inherits them),
    then restored: use it for variables read at import time, such as XLA_FLAGS or OMP_NUM_THREADS.
    Exceptions in the child are re-raised here with the child's traceback attached.
    """
    saved = {k: os.environ.get(k) for k in (env or {})}
    start = time.perf_counter()
    try:
        os.environ.update(env or {})
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            value, peak = pool.submit(_call_and_measure, fn, args, kwargs).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return IsolatedResult(value=value, process_peak_rss_bytes=peak, wall_s=time.perf_counter() - start)


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


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed distribution versions (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


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
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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
