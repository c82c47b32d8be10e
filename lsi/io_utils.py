"""File IO shared by every stage: atomic writes and the one JSONL reader.

Writes go to a temporary name in the same folder, are fsynced, then renamed over the target, so a reader (or a
restarted run) sees either the old file or the complete new one, never a partial file. Reads name the file and
line of any malformed record or undecodable byte.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import tempfile
import zlib
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


def json_line(value: Any) -> str:
    """One JSONL line: compact JSON, non-ASCII kept as is, numpy scalars and dataclasses converted."""
    return json.dumps(value, ensure_ascii=False, default=_json_default) + "\n"


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Any]) -> pathlib.Path:
    return write_text_atomic(path, "".join(json_line(r) for r in records))


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a config inside a record, e.g. its method
        return dataclasses.asdict(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class TextFile:
    """A UTF-8 text file (gunzipped when its name ends in .gz) whose bad bytes are a ValueError naming the file and
    line: text IO decodes in blocks read ahead, so its own UnicodeDecodeError knows neither. Iterate it for lines,
    or `read()` it whole (for json.load)."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._file: IO[str] = (gzip.open(self.path, "rt", encoding="utf-8") if self.path.suffix == ".gz"
                               else open(self.path, encoding="utf-8"))

    def __enter__(self) -> TextFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return self._located(self._file.__next__)

    def read(self, size: int = -1) -> str:
        return self._located(self._file.read, size)

    def readline(self, size: int = -1) -> str:
        return self._located(self._file.readline, size)

    def _located(self, read: Any, *args: Any) -> Any:
        try:
            return read(*args)
        except UnicodeDecodeError:
            raise _utf8_error(self.path) from None
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise ValueError(f"{self.path}: corrupt or truncated gzip data ({e}).") from None


def _utf8_error(path: pathlib.Path) -> ValueError:
    """The first line of `path` that is not UTF-8, found by decoding line by line (no UTF-8 character contains a
    newline byte, so a line decodes on its own); only called once decoding has failed."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return ValueError(f"{path}:{line_no}: not valid UTF-8 (byte 0x{line[e.start]:02x} at byte "
                                  f"{e.start + 1} of the line: {e.reason}); save the file as UTF-8.")
    return ValueError(f"{path}: not valid UTF-8.")


def open_text(path: str | os.PathLike) -> TextFile:
    """A UTF-8 text file, transparently gunzipped when its name ends in .gz; undecodable bytes are an error naming
    the file and line."""
    return TextFile(path)


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
