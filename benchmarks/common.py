"""Shared helpers of the side-by-side benchmarks: timing, peak memory, process isolation, machine info, tables.

Every benchmark measures each side (ours and a peer) the same way: each `Side` lives in a fresh spawned interpreter
(`start_side`), so that its peak memory is its own and one side's thread pools cannot slow the other's; its calls are
timed in alternating rounds (`time_interleaved`), so that a shared machine's changing load hits all sides alike, with
a record of how busy other processes kept the machine meanwhile. Result files are written with
`lsi.io_utils.write_json_atomic` and describe themselves (`environment_info`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import multiprocessing
import os
import pathlib
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Self
from unittest import mock

import numpy as np

from lsi.self_improve.manifest import package_versions

MIB = 1024 * 1024
REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# --- timing -------------------------------------------------------------------------------------------------------

def timed_call(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) of one call of `fn`, which must block until done."""
    cpu_start = time.process_time()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3) -> dict[str, Any]:
    """`summarize_times` of `repeats` blocking calls of `fn` after `warmup` untimed ones."""
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
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_load: float | None, timeout_s: float, poll_s: float = 5.0) -> dict[str, Any]:
    """Waits (up to `timeout_s`) until the 1-min load average is below `max_load` (None: no wait); returns what it
    saw, with the cores other processes kept busy over the half second before timing starts."""
    before = os.getloadavg()
    start = time.monotonic()
    if max_load is not None and before[0] >= max_load:
        print(f"[benchmark] waiting for load average < {max_load} (now {before[0]:.2f})", flush=True)
        while os.getloadavg()[0] >= max_load and time.monotonic() - start < timeout_s:
            time.sleep(poll_s)
    after, busy_start = os.getloadavg(), machine_busy_seconds()
    time.sleep(0.5)
    busy_end = machine_busy_seconds()
    return {"threshold_1min": max_load, "timeout_s": timeout_s, "waited_s": round(time.monotonic() - start, 1),
            "quiet": None if max_load is None else after[0] < max_load,
            "load_average_before": list(before), "load_average_at_start": list(after),
            "busy_cores_at_start": None if busy_start is None or busy_end is None else (busy_end - busy_start) / 0.5}


def throughput(items: float, timing: dict[str, Any]) -> dict[str, float]:
    """Items per second at the median, best (min time) and worst (max time) of a `time_call` result."""
    return {"median": items / timing["median_s"], "best": items / timing["min_s"], "worst": items / timing["max_s"]}


def side_rates(items_per_call: int, ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of a side-by-side record: each side's items/s at its median time, ours over transformers', and
    each side's result with its `throughput`."""
    sides = {"ours": ours, "transformers": theirs}
    rates = {name: throughput(items_per_call, side["timing"]) if side else None for name, side in sides.items()}
    return {"tokens_per_s": {name: rate["median"] if rate else None for name, rate in rates.items()},
            "ratio_ours_over_transformers": rates["ours"]["median"] / rates["transformers"]["median"]
            if ours and theirs else None,
            **{name: side | {"tokens_per_s": rates[name]} if side else None for name, side in sides.items()}}


# --- memory -------------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: its high-water mark); None off Linux."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is None:
        import psutil  # noqa: PLC0415  (only off Linux)

        return psutil.Process().memory_info().rss
    return kib * 1024


# The highest kernel high-water mark seen before `PeakRSS` cleared it: the process's lifetime peak survives.
_PEAK_BEFORE_RESETS = 0


def peak_rss_bytes() -> int:
    """Peak resident set of this process since it started (also across `PeakRSS` blocks, which reset the kernel's)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource  # noqa: PLC0415

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB
    return max(kib * 1024, _PEAK_BEFORE_RESETS)


class PeakRSS:
    """Peak resident set of this process inside a `with` block, in `self.peak_bytes` (and `start_bytes`).

    On Linux >= 4.0 the kernel's own high-water mark is reset on entry (writing 5 to /proc/self/clear_refs), so the
    figure is exact and costs nothing; elsewhere it is the process's lifetime peak, an upper bound (`self.method`).
    """

    def __enter__(self) -> Self:
        global _PEAK_BEFORE_RESETS
        self.start_bytes = current_rss_bytes()
        _PEAK_BEFORE_RESETS = peak_rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "process lifetime peak"
        return self

    def __exit__(self, *exc: object) -> None:
        global _PEAK_BEFORE_RESETS
        kib = _status_kib("VmHWM")
        self.peak_bytes = kib * 1024 if self.method == "VmHWM" and kib is not None else peak_rss_bytes()
        # The kernel's RSS counters are per-thread batched (tens of pages): keep the lifetime peak >= this block's.
        _PEAK_BEFORE_RESETS = max(_PEAK_BEFORE_RESETS, self.peak_bytes)


class Side:
    """One benchmark side as it lives in its process: `call()` is its blocking unit of work; `run_once` times one
    call (wall and CPU seconds) and keeps the peak RSS of all calls; `settle` runs one untimed."""

    output: Any = None
    rss_before_bytes: int | None = None
    call_peak_bytes = 0
    memory_method = ""

    def call(self) -> Any:
        raise NotImplementedError

    def settle(self) -> None:
        self.output = self.call()

    def run_once(self) -> tuple[float, float]:
        self.output = None  # free the previous output first, as a loop that consumes each result would
        if self.rss_before_bytes is None:
            gc.collect()
            self.rss_before_bytes = current_rss_bytes()
        with PeakRSS() as memory:
            timing = timed_call(lambda: setattr(self, "output", self.call()))
        self.call_peak_bytes = max(self.call_peak_bytes, memory.peak_bytes)
        self.memory_method = memory.method
        return timing

    def call_memory(self, work: str) -> dict[str, Any]:
        """RSS before the first call and the peak during the calls (warmup and timed), named after the `work`."""
        return {f"rss_before_{work}_mib": (self.rss_before_bytes or 0) / MIB,
                f"{work}_peak_rss_mib": self.call_peak_bytes / MIB, "method": self.memory_method}


# --- process isolation --------------------------------------------------------------------------------------------

def _side_main(conn: Any, factory: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        side = factory(*args, **kwargs)
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", None))
    while (message := conn.recv()) is not None:
        method, method_args, method_kwargs = message
        try:
            conn.send(("ok", getattr(side, method)(*method_args, **method_kwargs)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))
    conn.send(("ok", peak_rss_bytes()))


class SideProcess:
    """One benchmark side in its own spawned Python process, so that its peak memory, imports, thread pools and
    allocator are its own.

    `SideProcess(factory, *args)` builds `factory(*args)` there (a top-level class or function: spawn imports it by
    module path); `call("method", ...)` runs one of that object's methods there and returns its (picklable) result;
    `close()` ends the process and returns its lifetime peak RSS in bytes. `env` entries are in the child's
    environment from its start (XLA_FLAGS...). Errors in the child are raised here as RuntimeError with its traceback.
    """

    def __init__(self, factory: Callable[..., Any], *args: Any, env: dict[str, str] | None = None, **kwargs: Any):
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        with mock.patch.dict(os.environ, env or {}):  # the child inherits the environment at its start
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


class InProcess(contextlib.nullcontext):
    """`SideProcess`'s interface for a side built in this process (`--no_isolate`): no peak memory of its own."""

    def __init__(self, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(self)
        self._side = factory(*args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._side, method)(*args, **kwargs)

    def close(self) -> None:
        self._side = None


def start_side(factory: Callable[..., Any], *args: Any, isolate: bool = True, env: dict[str, str] | None = None
               ) -> SideProcess | InProcess:
    return SideProcess(factory, *args, env=env) if isolate else InProcess(factory, *args)


def time_sides(sides: dict[str, SideProcess | InProcess], warmup: int, repeats: int, settle: bool = False
               ) -> dict[str, dict[str, Any]]:
    """`time_interleaved` over each `Side`'s `run_once`, after an untimed call of its own where `settle`."""
    calls = {name: functools.partial(side.call, "run_once") for name, side in sides.items()}
    settles = {name: functools.partial(side.call, "settle") for name, side in sides.items()} if settle else None
    return time_interleaved(calls, warmup=warmup, repeats=repeats, settle=settles)


def measure_side(side: Side, warmup: int, repeats: int, *report_args: Any) -> dict[str, Any]:
    """A side built in this process: its timed calls after warmup, and its `report(median_s, *report_args)`."""
    timing = time_interleaved({"side": side.run_once}, warmup=warmup, repeats=repeats)["side"]
    return side.report(timing["median_s"], *report_args) | {"timing": timing}


def run_isolated(fn: Callable[..., Any], *args: Any, isolate: bool = True, env: dict[str, str] | None = None
                 ) -> tuple[Any, float | None]:
    """(`fn(*args)`, the peak RSS in MiB of the fresh process it ran in), or (`fn(*args)`, None) run here."""
    if not isolate:
        return fn(*args), None
    with SideProcess(functools.partial, fn, *args, env=env) as side:
        value = side.call("__call__")
        return value, side.close() / MIB


def xla_env(extra_flags: str | None) -> dict[str, str] | None:
    """The environment of a side process whose XLA_FLAGS add `extra_flags` to the inherited ones."""
    return {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {extra_flags}".strip()} if extra_flags else None


# --- records ------------------------------------------------------------------------------------------------------

def add_comparison_flags(parser: argparse.ArgumentParser, default_output: pathlib.Path) -> None:
    """The flags of the CPU side-by-side benchmarks (forward, sampler): where the weights come from, where the result
    goes, torch's threads, and how the sides' processes run; `check_comparison_flags` checks them once parsed."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default="smollm2-135m-instruct",
                        help="packaged model name, .gguf file or HF directory (default: %(default)s)")
    source.add_argument("--config", default=None, help="named lsi config with random weights (and random prompts) "
                                                       "instead of a checkpoint, e.g. 'tiny' (smoke test)")
    parser.add_argument("--threads", type=int, default=usable_cores(),
                        help="torch intra-op threads (default: usable cores, %(default)s)")
    parser.add_argument("--output", default=None, help=f"JSON path (default: {default_output.relative_to(REPO)} for a "
                                                       "checkpoint, a temp-dir path for --config)")
    parser.add_argument("--no_isolate", "--no-isolate", dest="isolate", action="store_false",
                        help="run the sides in this process: no per-side process peak memory, and the runtimes' "
                             "thread pools share one process (timings less trustworthy)")
    parser.add_argument("--xla_flags", "--xla-flags", default=None,
                        help="XLA_FLAGS for our side's processes (appended to the inherited ones); needs isolation")


def add_timing_flags(parser: argparse.ArgumentParser, repeats: int, seed_help: str) -> None:
    """How each side is timed and seeded, and whether the reference side runs (every side-by-side benchmark)."""
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side before timing")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--no_reference", "--no-reference", dest="reference", action="store_false",
                        help="skip the transformers side")


def check_comparison_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.xla_flags and not args.isolate:
        parser.error("--xla_flags needs a fresh process for our side; drop --no_isolate.")


def output_path(given: str | os.PathLike | None, config: str | None, name: str, default: pathlib.Path
                ) -> pathlib.Path:
    """The result file: `given`, else a temp-dir file for a random-weight `config` run, else `default`."""
    if given:
        return pathlib.Path(given)
    if config:
        return pathlib.Path(tempfile.gettempdir()) / "lsi-benchmarks" / f"{name}_{config}.json"
    return default


def config_dict(cfg: Any) -> dict[str, Any]:
    """A model config as JSON: its fields, the dtypes by name."""
    return dataclasses.asdict(cfg) | {"dtype": str(np.dtype(cfg.dtype)), "param_dtype": str(np.dtype(cfg.param_dtype))}


def cell(value: Any) -> str:
    """A summary table's cell: floats to 4 significant digits with thousands separated, None as '-'."""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # Imported here: lsi.report brings matplotlib, which would count in every side process's peak memory.
    from lsi.report import text_table  # noqa: PLC0415

    return text_table(header, [[cell(v) for v in row] for row in rows])


SIDE_COLUMNS = ["side", "tokens/s", "median s", "min s", "max s", "cpu util", "others' cores"]


def side_rows(record: dict[str, Any], extra_columns: Callable[[str, dict], list[Any]]) -> list[list[Any]]:
    """A summary table's row per side in `record` (SIDE_COLUMNS), then that side's `extra_columns`."""
    rows = []
    for side in ("ours", "transformers"):
        if record[side]:
            t = record[side]["timing"]
            rows.append([side, record["tokens_per_s"][side], t["median_s"], t["min_s"], t["max_s"],
                         t["cpu_utilization"], t["other_processes_cores"], *extra_columns(side, record[side])])
    return rows


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which cgroups and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_info() -> dict[str, Any]:
    """The CPU's name and which of the SIMD features that matter for matmul speed it has (Linux /proc/cpuinfo)."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    field = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}  # CPUs alike
    flags = set(field.get("flags", "").split())
    return {"cpu_model": field.get("model name") or platform.processor() or platform.machine(),
            "cpu_flags": [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]}


def environment_info(packages: tuple[str, ...], env_vars: tuple[str, ...] = ()) -> dict[str, Any]:
    """Machine, software and invocation (the command as a user would retype it) for a result file."""
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "machine": cpu_info() | {"cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "memory_gib": memory_gib,
                                 "platform": platform.platform(), "python": platform.python_version()},
        "packages": package_versions(packages),
        "env": {name: os.environ.get(name) for name in env_vars},
    }
