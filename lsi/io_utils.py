"""File IO shared by every stage: paths through `etils.epath`, atomic writes and the one JSONL reader.

Every path a stage reads or writes is an `epath.Path`, so a run folder can be local or on an object store
(`gs://bucket/run`). On local disk a write goes to a temporary name in the same folder, is fsynced, then renamed
over the target, so a reader (or a restarted run) sees either the old file or the complete new one, never a partial
file. An object store has no rename (GCS "renames" by copy and delete) but makes each object write atomic: the new
object becomes visible whole when its upload completes, or not at all, so there the final object is written directly.
Reads name the file and line of any malformed record or undecodable byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import zlib
from typing import IO, Any, Iterable, Iterator

from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: a local path, or an object-store URI such as gs://bucket/run kept intact (pathlib
    would fold its "//" into "gs:/bucket/run", a local folder called "gs:")."""
    return path if isinstance(path, epath.Path) else epath.Path(path)


def is_local(path: str | os.PathLike) -> bool:
    """Whether `path` is on a local (POSIX) filesystem, not an object store such as gs://."""
    return "://" not in os.fspath(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> epath.Path:
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        with path.open("wb") as f:  # one object upload: visible whole when it completes, else not at all
            f.write(data)
        return path
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


def files_under(directory: str | os.PathLike) -> list[str]:
    """The relative names of every file below `directory`, sorted (epath has no rglob; walk works on object stores,
    where a "directory" is a name prefix)."""
    directory = as_path(directory)
    return sorted(os.path.relpath(os.fspath(root / name), os.fspath(directory))
                  for root, _, names in directory.walk() for name in names)


def local_copy(path: str | os.PathLike) -> pathlib.Path:
    """`path` itself when local; an object-store file or folder copied to a local cache otherwise, for readers that
    need a local file (tokenizers, safetensors' mmap, GGUF). The copy is named by the source's names, sizes and
    mtimes, so a changed source gets a new local path (and path-keyed caches miss) while an unchanged one is reused."""
    if is_local(path):
        return pathlib.Path(path)
    source = as_path(path)
    stats = {name: (source / name).stat() for name in (files_under(source) if source.is_dir() else [""])}
    stamp = [os.fspath(source), [(name, st.length, st.mtime) for name, st in stats.items()]]
    cache = pathlib.Path(tempfile.gettempdir()) / "lsi-object-store-cache"
    local = cache / hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16] / source.name
    if not local.exists():
        cache.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".staging-", dir=cache)) / source.name
        for name in stats:
            target = staging / name if name else staging
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((source / name).read_bytes())
        local.parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # another process finished the same copy first
            os.replace(staging, local)
        shutil.rmtree(staging.parent, ignore_errors=True)
    return local


def upload_tree(local_dir: str | os.PathLike, destination: str | os.PathLike) -> epath.Path:
    """Copies a local folder's files to `destination` (any epath location), each file written atomically."""
    local_dir, destination = pathlib.Path(local_dir), as_path(destination)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        write_bytes_atomic(destination / file.relative_to(local_dir).as_posix(), file.read_bytes())
    return destination


def write_text_atomic(path: str | os.PathLike, text: str) -> epath.Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: Any) -> epath.Path:
    return write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n")


def json_line(value: Any) -> str:
    """One JSONL line: compact JSON, non-ASCII kept as is, numpy scalars and dataclasses converted."""
    return json.dumps(value, ensure_ascii=False, default=_json_default) + "\n"


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Any]) -> epath.Path:
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
        self.path = as_path(path)
        gz = self.path.suffix == ".gz"
        self._opened = contextlib.ExitStack()
        self._file: IO[str]
        if is_local(self.path):
            self._file = gzip.open(self.path, "rt", encoding="utf-8") if gz else open(self.path, encoding="utf-8")
        elif gz:  # GzipFile reads the store's file object with read() alone
            self._file = gzip.open(self._opened.enter_context(self.path.open("rb")), "rt", encoding="utf-8")
        else:
            # An object store's file (TF's GFile, opened as a context by epath) is no io.IOBase for TextIOWrapper;
            # its own text mode decodes UTF-8 line by line.
            self._file = self._opened.enter_context(self.path.open("r"))

    def __enter__(self) -> TextFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._opened.close()  # a GzipFile given a file object leaves it open

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


def _utf8_error(path: epath.Path) -> ValueError:
    """The first line of `path` that is not UTF-8, found by decoding line by line (no UTF-8 character contains a
    newline byte, so a line decodes on its own); only called once decoding has failed."""
    with path.open("rb") as raw, (gzip.open(raw, "rb") if path.suffix == ".gz" else contextlib.nullcontext(raw)) as f:
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
