"""File IO shared by every stage: atomic writes and the one JSONL reader.

Writes go to a temporary name in the same folder, are fsynced, then renamed over the target, so a reader (or a
restarted run) sees either the old file or the complete new one, never a partial file. Reads name the file and
line of any malformed record.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import tempfile
from typing import IO, Any, Iterable, Iterator


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


def open_text(path: str | os.PathLike) -> IO[str]:
    """A UTF-8 text file, transparently gunzipped when its name ends in .gz."""
    path = pathlib.Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is a ValueError naming the file
    and the line."""
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: malformed JSON line ({e.msg} at column {e.colno}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}.")
            yield line_no, record
