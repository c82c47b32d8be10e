"""One process writes a stage output at a time: a lock file beside the stage directory.

The lock file `.<directory>.lock` holds its holder's host, pid and start time. A second process that finds it exits
with a message naming the holder; a lock whose holder process is gone (same host, pid no longer running) is stale and
is taken over, so a SIGKILLed run never blocks its own rerun. A holder on another host cannot be checked from here:
the message says so and names the file to remove once that run is known to be dead.

On local disk the lock is created exclusively (a hard link of a private copy, or O_EXCL), so of two processes that
claim it at once exactly one wins. An object store (gs://) offers neither through epath, and epath exposes no
create-if-absent precondition: there the claim is check, write, then read back, which keeps a second writer out
whenever the first one's lock is already visible, but two processes that claim within the same moment can both
pass. One writer per stage on an object store is therefore the launcher's job (one job per run folder; within a
job only process 0 claims), and the lock is a guard against a second job, not a mutex.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from typing import Iterator

from etils import epath

from lsi.io_utils import as_path, is_local


class StageLockedError(RuntimeError):
    """Another live process is writing this stage output."""


def lock_path(directory: str | os.PathLike) -> epath.Path:
    # Beside the directory, not inside it: a restarted stage removes its directory, never the lock it holds.
    directory = as_path(directory)
    return directory.parent / f".{directory.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _holder(path: epath.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # released meanwhile, or not written by `_try_create` (which never shows a partial record)


def _is_stale(holder: dict | None) -> bool:
    if holder is None:
        return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))


def _try_create(path: epath.Path, record: dict) -> bool:
    """Creates `path` holding `record`, or returns False if it exists. The record is written to a private file first
    and hard-linked into place, so the lock never exists without its holder: a lock created empty and filled after
    would read as stale to a second process that looks in between, and both would write the stage."""
    if not is_local(path):
        return _create_on_object_store(path, record)
    private = path.with_name(f"{path.name}.{os.getpid()}.{id(record)}.tmp")
    private.write_text(json.dumps(record))
    try:
        os.link(private, path)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then fill (the window above reopens)
        return _create_exclusive(path, record)
    finally:
        private.unlink()
    return True


def _create_on_object_store(path: epath.Path, record: dict) -> bool:
    """Check, write, read back (see the module docstring for what this does not guarantee). An object write is atomic,
    so the lock is never seen without its holder; the read-back drops a claim that a racing writer overwrote."""
    if path.exists():
        return False
    path.write_text(json.dumps(record))
    return _holder(path) == record


def _create_exclusive(path: epath.Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


@contextlib.contextmanager
def stage_lock(directory: str | os.PathLike, stage: str) -> Iterator[epath.Path]:
    """Holds the lock of a stage output directory for the duration of the block."""
    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "stage": stage,
              "since_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):  # a stale lock is removed and the claim retried; a racing process may win the retry
        if _try_create(path, record):
            break
        holder = _holder(path)
        if not _is_stale(holder):
            where = "this host" if holder.get("host") == socket.gethostname() else f"host {holder.get('host')}"
            raise StageLockedError(
                f"{directory} is being written by the {holder.get('stage')} stage of process {holder.get('pid')} on "
                f"{where} (since {holder.get('since_utc')}; lock {path}). Wait for it to finish, or, if that process "
                f"is dead on another host, remove {path}.")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        raise StageLockedError(f"Could not take the lock {path}: other processes keep claiming it.")
    try:
        yield path
    finally:
        if _holder(path) == record:
            path.unlink()
