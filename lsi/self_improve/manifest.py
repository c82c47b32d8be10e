"""Every stage's manifest.json, built and written here: what the stage ran with (config, inputs), what it wrote
(outputs with their hashes, counts), and what this invocation did (last_run: its own figures, the seconds it took
and the software and devices it ran on). `lsi.stage_lineage.seal` adds the lineage and code version when the stage
completes.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import sys
from typing import Any

from lsi.io_utils import as_path, write_json_atomic

PACKAGES = ("lsi", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow", "numpy", "tokenizers")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with as_path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    import jax  # noqa: PLC0415

    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "packages": package_versions(),
    }


MANIFEST_FILE = "manifest.json"


def stage_manifest(stage: str, config: Any, counts: dict[str, Any], *, inputs: dict[str, Any] | None = None,
                   outputs: dict[str, Any] | None = None, seconds: float | None = None,
                   last_run: dict[str, Any] | None = None, **details: Any) -> dict[str, Any]:
    """A stage's manifest: its keys in one order for every stage. `details` are stage-specific records (the train
    stage's final metrics); `last_run` holds what differs between a resumed and an uninterrupted run."""
    return {"stage": stage, "config": config, "inputs": inputs or {}, "outputs": outputs or {}, "counts": counts,
            **details, "last_run": {**(last_run or {}), "seconds": seconds, "environment": environment()}}


def file_output(path: pathlib.Path, **counts: int) -> dict[str, Any]:
    """A written file's manifest entry: its hash and what it holds ({"sha256": ..., "records": 12})."""
    return {"sha256": file_sha256(path), **counts}


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Writes `directory`/manifest.json atomically (the stage's last write: it names exactly what is there)."""
    write_json_atomic(as_path(directory) / MANIFEST_FILE, manifest)
    return manifest
