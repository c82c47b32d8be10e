"""What every stage output was made from, and the rule that a rerun never mixes old and new work.

A stage claims its output directory before it writes anything: it records its lineage (its own config and the
fingerprints of everything it reads: pool questions, upstream manifests, model, exemplars, prompt style) in
`lineage.json`. A later run of the same stage compares:
- same lineage: the stage keeps or resumes its work (sample shards, train checkpoints, eval modes);
- another lineage: it refuses, naming what changed, unless the stage is restarted (`--restart_stage`), which clears
  the directory first, so old outputs never sit beside new ones.
Upstream stages are read only through `upstream_fingerprint`, which checks that the upstream manifest exists and that
every output it records still has its recorded sha256 (an edited or truncated sample shard is refused, not read).

The code version (lsi's version and git commit) is recorded but not compared: a bug fix should not strand a run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
import os
import pathlib
import subprocess
from typing import Any, Iterable, Mapping

from etils import epath

from lsi.io_utils import as_path, files_under, is_local, write_json_atomic
from lsi.self_improve.manifest import MANIFEST_FILE, file_sha256, package_versions

LINEAGE_FILE = "lineage.json"


class LineageError(ValueError):
    """A stage output that was made from other inputs or another config, or an upstream output that changed."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_json(value: Any) -> str:
    """sha256 of `value` as canonical JSON (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode())


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache keys: a rewritten file is hashed again
    return file_sha256(path)


def fingerprint_file(path: str | os.PathLike) -> str:
    if not is_local(path):  # an object store's mtime has whole seconds: too coarse a cache key, so hash every time
        return file_sha256(path)
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def fingerprint_path(path: str | os.PathLike) -> str:
    """A file's sha256, or a directory's: sha256 over its files' relative names and sha256s (sorted)."""
    path = as_path(path)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"Cannot fingerprint {path}: no such file or directory.")
        return fingerprint_file(path)
    return fingerprint_json({name: fingerprint_file(path / name) for name in files_under(path)})


def fingerprint_model(path_or_name: str | os.PathLike) -> str:
    """The fingerprint of a checkpoint: its GGUF file or HF directory (a packaged name is resolved first)."""
    from lsi.checkpoints.registry import resolve_model_path  # noqa: PLC0415

    return fingerprint_path(resolve_model_path(path_or_name))


def fingerprint_examples(examples: Iterable[Any]) -> str:
    """The fingerprint of a list of questions: ids, texts and (where present) gold answers, in order."""
    return fingerprint_json([[e.id, e.question, e.answer, list(e.alternatives)] for e in examples])


def fingerprint_exemplars(task: Any) -> str:
    """The fingerprint of every exemplar set a task can prompt with."""
    # `source` (the file's path) is left out: the same exemplars read from another checkout are the same input.
    return fingerprint_json({name: {k: v for k, v in dataclasses.asdict(exemplar_set).items() if k != "source"}
                             for name, exemplar_set in sorted(task.exemplar_sets.items())})


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """lsi's version and, in a git checkout, its commit and whether the tree had uncommitted changes."""
    root = pathlib.Path(__file__).resolve().parents[1]
    version: dict[str, Any] = {"lsi": package_versions(("lsi",))["lsi"], "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return version
    return {**version, "git_commit": commit, "git_dirty": bool(status.strip())}


@dataclasses.dataclass(frozen=True)
class Lineage:
    """What a stage output is made from. `inputs` maps a name to a fingerprint (sha256) or a short value."""

    stage: str
    config: Mapping[str, Any]
    inputs: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        # JSON round trip: tuples become lists, so a lineage compares equal to the one read back from disk.
        return json.loads(json.dumps({"stage": self.stage, "config": self.config, "inputs": self.inputs},
                                     sort_keys=True, default=str))

    def changes(self, previous: Mapping[str, Any]) -> list[str]:
        """What differs from a recorded lineage, as readable lines ("config.temperature: 0.7 -> 1.0")."""
        current = self.as_dict()
        lines = []
        for part in ("stage", "config", "inputs"):
            old, new = previous.get(part), current[part]
            if isinstance(old, dict) and isinstance(new, dict):
                for key in sorted(set(old) | set(new)):
                    if old.get(key) != new.get(key):
                        lines.append(f"{part}.{key}: {_short(old.get(key))} -> {_short(new.get(key))}")
            elif old != new:
                lines.append(f"{part}: {_short(old)} -> {_short(new)}")
        return lines


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def read_lineage(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = as_path(directory) / LINEAGE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def claim(directory: str | os.PathLike, lineage: Lineage, restart: bool = False, replace_changed: bool = False
          ) -> str:
    """Makes `directory` the output of `lineage` before the stage writes there. Returns "new" (empty or cleared: run
    from scratch) or "same" (same lineage: keep and resume). Work of another lineage raises LineageError, unless
    `replace_changed` (then it is removed first); `restart` removes whatever is there, same lineage or not."""
    directory = as_path(directory)
    previous = read_lineage(directory)
    has_files = directory.exists() and any(directory.iterdir())
    if previous is not None and not restart:
        changes = lineage.changes(previous)
        if not changes:
            remove_temporary_files(directory)
            return "same"
        if not replace_changed:
            raise LineageError(
                f"{directory} holds the {lineage.stage} stage's output of another config or other inputs:\n  "
                + "\n  ".join(changes)
                + f"\nKeeping both would mix them. Rerun with --restart_stage={lineage.stage} to replace that output "
                  "(and redo what depends on it), or use a new run_dir.")
    elif has_files and previous is None and not (restart or replace_changed):
        raise LineageError(
            f"{directory} holds files but no {LINEAGE_FILE}, so what they were made from is unknown (an older lsi, or "
            f"files copied in). Rerun with --restart_stage={lineage.stage} to replace them, or use a new run_dir.")
    if has_files:
        directory.rmtree()
    write_json_atomic(directory / LINEAGE_FILE, {**lineage.as_dict(), "code": code_version()})
    return "new"


TEMPORARY_PATTERNS = ("*.tmp", "*.orbax-checkpoint-tmp*")  # lsi's atomic writes; Orbax's unfinished saves


def remove_temporary_files(directory: str | os.PathLike) -> list[epath.Path]:
    """Removes what a killed writer left half-written in a claimed directory (the lock makes them nobody's)."""
    directory = as_path(directory)
    found = sorted({root / name for root, dirs, files in directory.walk() for name in [*dirs, *files]
                    if any(fnmatch.fnmatch(name, pattern) for pattern in TEMPORARY_PATTERNS)}, reverse=True)
    for path in found:
        if path.is_dir():
            path.rmtree(missing_ok=True)
        elif path.exists():
            path.unlink(missing_ok=True)
    return found


def output_fingerprints(directory: str | os.PathLike, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """{name: {"sha256": ...}} for the named files (or directories) under `directory`: a manifest's "outputs"."""
    directory = as_path(directory)
    return {name: {"sha256": fingerprint_path(directory / name)} for name in sorted(names)}


def upstream_fingerprint(directory: str | os.PathLike, stage: str) -> str:
    """The fingerprint of an upstream stage's complete output, after checking that its manifest exists and that every
    output it records is still there with its recorded sha256."""
    directory = as_path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.exists():
        raise LineageError(f"{directory} has no {MANIFEST_FILE}: the {stage} stage has not completed there. Run "
                           f"--stage={stage} first.")
    manifest = json.loads(manifest_path.read_text())
    outputs = manifest.get("outputs") or {}
    for name, recorded in outputs.items():
        path = directory / name
        if not path.exists():
            raise LineageError(f"{path}, an output of the {stage} stage, is missing. Rerun with "
                               f"--restart_stage={stage}.")
        if fingerprint_path(path) != recorded["sha256"]:
            raise LineageError(f"{path} changed after the {stage} stage wrote it (its sha256 no longer matches "
                               f"{manifest_path}). Rerun with --restart_stage={stage} rather than edit its outputs.")
    # What the stage made and from what: its outputs' and lineage's fingerprints, not the manifest's bytes (which
    # hold timings and the run folder's path, so a moved or resumed run would look changed).
    return fingerprint_json({"outputs": outputs, "lineage": manifest.get("lineage")})
