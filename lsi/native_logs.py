"""Quiet C++ logging of TensorFlow and XLA by default: their INFO and WARNING lines at start-up ("Could not find cuda
drivers", "This TensorFlow binary is optimized to use...") are not lsi's messages and bury its own.

- `default_log_level()` runs when `lsi` is imported, before any lsi module imports TensorFlow or JAX: it sets
  TF_CPP_MIN_LOG_LEVEL=2 (errors only), which TF's and XLA's own logging read, unless the user has set it.
- `quiet_tensorflow_import()` runs in the `lsi` command only (never as a side effect of importing lsi in a notebook
  or another program, since it touches the process's stderr). TensorFlow's shared libraries log a few lines through
  absl while they load, before absl::InitializeLog ("WARNING: All log messages before absl::InitializeLog() is
  called are written to STDERR", then cudart_stub's "Could not find cuda drivers"); no environment variable reaches
  those, so the first `import tensorflow` runs with stderr (fd 2) captured, and what it printed is written back
  without the absl lines below TF_CPP_MIN_LOG_LEVEL's severity (and without that notice). Everything else, Python
  warnings and tracebacks included, comes through.

A user's own TF_CPP_MIN_LOG_LEVEL is kept, and applies to those load-time lines too; 0 shows everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LOG_LEVEL = "2"
# absl's severity letters in TF_CPP_MIN_LOG_LEVEL's order: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL.
_SEVERITIES = "IWEF"
# "I0000 00:00:1796051822.856744   18102 cudart_stub.cc:31] Could not find ...": severity, date, time, thread, file.
_ABSL_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def default_log_level() -> None:
    """TF_CPP_MIN_LOG_LEVEL=2 unless the user has set it."""
    os.environ.setdefault(LOG_LEVEL_VARIABLE, DEFAULT_LOG_LEVEL)


def quiet_tensorflow_import() -> None:
    """Unless TensorFlow is already imported or the level is 0, arranges for the first `import tensorflow` to drop
    absl's load-time lines below TF_CPP_MIN_LOG_LEVEL (for the `lsi` command; see the module docstring)."""
    default_log_level()
    level = min_log_level()
    if level <= 0 or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorflowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorflowImport(level))


def min_log_level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as a number; 0 (show everything) when unset or not a number."""
    try:
        return int(os.environ.get(LOG_LEVEL_VARIABLE, "0"))
    except ValueError:
        return 0


def without_quiet_lines(text: str, level: int) -> str:
    """`text` without absl's initialization notice and without absl log lines of a severity below `level`."""
    kept = []
    for line in text.splitlines(keepends=True):
        header = _ABSL_LINE.match(line)
        if line.startswith(_ABSL_NOTICE) or (header and _SEVERITIES.index(header[1]) < level):
            continue
        kept.append(line)
    return "".join(kept)


class _QuietTensorflowImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself. On the first `import tensorflow` it leaves sys.meta_path, lets the other finders locate
    the package, and runs the package's loading inside `_filtered_stderr`."""

    def __init__(self, level: int):
        self.level = level

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, level = loader.exec_module, self.level

        def quiet_exec_module(module: Any) -> None:
            try:
                with _filtered_stderr(level):
                    exec_module(module)
            finally:
                del loader.exec_module  # back to the class's own: this loader instance loads tensorflow only

        loader.exec_module = quiet_exec_module
        return spec


@contextlib.contextmanager
def _filtered_stderr(level: int) -> Iterator[None]:
    """fd 2 goes to a temporary file for the block; afterwards its text is written to the real fd 2, less what
    `without_quiet_lines` drops. Without an fd 2 (a daemon), nothing is captured."""
    try:
        real_stderr = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as captured:
        _flush_python_stderr()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            _flush_python_stderr()
            os.dup2(real_stderr, 2)
            os.close(real_stderr)
            captured.seek(0)
            data = without_quiet_lines(captured.read().decode("utf-8", "replace"), level).encode("utf-8")
            while data:
                data = data[os.write(2, data):]


def _flush_python_stderr() -> None:
    """Python's buffered stderr is flushed at each switch, so that its text lands on the side it was written to."""
    if sys.stderr is not None:
        sys.stderr.flush()
