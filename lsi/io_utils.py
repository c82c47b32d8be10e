"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename over the target.

A reader (or a restarted run) therefore sees either the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Iterable


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: Any) -> pathlib.Path:
    return write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Any]) -> pathlib.Path:
    lines = (json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records)
    return write_text_atomic(path, "".join(lines))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
