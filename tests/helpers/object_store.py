"""A stand-in for Google Cloud Storage that needs no network, for tests of run folders on an object store.

`fake_gcs(root)` serves every `gs://bucket/key` path of `etils.epath` from the file `root/bucket/key`, through
epath's own TensorFlow (gfile) backend, the one that serves gs:// in production where TensorFlow is installed: lsi's
code gets the same `GFile` objects (no `readable()`, a context from `open`) that it gets from GCS. Two GCS rules are
kept that a local folder would not impose: an object cannot be appended to, and a rename is a copy then a delete
(never atomic), which the store counts so a test can see that lsi's writes do not depend on it.

What reads and writes gs:// outside epath (TensorFlow's TFRecord reader, tensorstore under Orbax, TensorBoard's
summary writer) does not see this store; `local_path` gives them the folder behind a gs:// path (see
tests/test_object_store_run.py for which ones a test routes and why).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Any, Iterator
from unittest import mock

from etils.epath import backend, gpath

SCHEME = "gs://"


class LocalBucketBackend(backend._TfBackend):  # noqa: SLF001 - epath's gfile backend, the production one for gs://
    """epath's gfile backend with gs://bucket/key mapped onto `root`/bucket/key."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.renames: list[tuple[str, str]] = []

    def local_path(self, path: str | os.PathLike) -> str:
        text = os.fspath(path)
        if not text.startswith(SCHEME):
            return text
        return os.path.join(self.root, text[len(SCHEME):])

    def _uri(self, local: str) -> str:
        return SCHEME + os.path.relpath(local, self.root)

    def open(self, path: Any, mode: str) -> Any:
        if "a" in mode:
            raise NotImplementedError(f"{path}: an object store cannot append to an object (mode {mode!r}).")
        return super().open(self.local_path(path), mode)

    def exists(self, path: Any) -> bool:
        return super().exists(self.local_path(path))

    def isdir(self, path: Any) -> bool:
        return super().isdir(self.local_path(path))

    def listdir(self, path: Any) -> list[str]:
        return super().listdir(self.local_path(path))

    def glob(self, path: Any) -> list[str]:
        return [self._uri(p) for p in super().glob(self.local_path(path))]

    def walk(self, top: Any, *, top_down: bool = True, on_error: Any = None) -> Iterator[tuple[str, list, list]]:
        for root, dirs, files in super().walk(self.local_path(top), top_down=top_down, on_error=on_error):
            yield self._uri(root), dirs, files

    def makedirs(self, path: Any, *, exist_ok: bool = False, mode: int | None = None) -> None:
        super().makedirs(self.local_path(path), exist_ok=exist_ok, mode=mode)

    def mkdir(self, path: Any, *, exist_ok: bool = False, mode: int | None = None) -> None:
        super().mkdir(self.local_path(path), exist_ok=exist_ok, mode=mode)

    def rmtree(self, path: Any) -> None:
        super().rmtree(self.local_path(path))

    def remove(self, path: Any) -> None:
        super().remove(self.local_path(path))

    def stat(self, path: Any) -> Any:
        return super().stat(self.local_path(path))

    def copy(self, path: Any, dst: Any, overwrite: bool) -> None:
        super().copy(self.local_path(path), self.local_path(dst), overwrite=overwrite)

    def rename(self, path: Any, dst: Any) -> None:
        self._copy_then_delete(path, dst, overwrite=False)

    def replace(self, path: Any, dst: Any) -> None:
        self._copy_then_delete(path, dst, overwrite=True)

    def _copy_then_delete(self, path: Any, dst: Any, overwrite: bool) -> None:
        """GCS has no rename: a copy, then a delete of the source, two steps a crash can separate."""
        self.renames.append((os.fspath(path), os.fspath(dst)))
        self.copy(path, dst, overwrite=overwrite)
        self.remove(path)


@contextlib.contextmanager
def fake_gcs(root: str | os.PathLike) -> Iterator[LocalBucketBackend]:
    """gs:// paths of epath served from `root` for the duration of the block (see the module docstring)."""
    pathlib.Path(root).mkdir(parents=True, exist_ok=True)
    store = LocalBucketBackend(root)
    # epath picks its gfile backend itself when TensorFlow is installed; with that check off it takes the table's.
    with mock.patch.dict(gpath._PREFIX_TO_BACKEND, {"gs": store}), \
            mock.patch.object(gpath, "_is_tf_installed", lambda: False), \
            mock.patch.object(gpath, "_GCS_BACKENDS", frozenset({store})):
        yield store
