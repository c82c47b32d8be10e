"""Orbax checkpoints of the train state plus the data iterator's position, with fallback past a damaged latest step.

A step directory holds two items: "state" (step, float32 params, optimizer state; restored straight onto the
mesh with the shardings the train step expects) and "data" (JSON: the iterator position). Saves are synchronous and
orbax finalises a step directory atomically, so a killed save leaves no step that looks complete; a step that does
look complete but fails to restore (files deleted or corrupted later) is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from lsi.io_utils import is_local

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int | None = 3):
        # Orbax writes gs:// itself (tensorstore's GCS driver; a commit marker where there is no atomic rename).
        self.directory = os.fspath(directory) if not is_local(directory) else os.path.abspath(os.fspath(directory))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)), force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data state) of the newest step that restores; None when no step does.

        `abstract_state`: ShapeDtypeStructs with `sharding` set, so arrays come back already placed on the mesh.
        """
        for step in reversed(self.all_steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                state = restored["state"]
                jax.block_until_ready(state)
                return step, state, dict(restored["data"])
            except Exception as err:  # noqa: BLE001 - any failure to read a step means: try the one before.
                log.warning("Checkpoint step %d in %s could not be restored (%s: %s); falling back to an earlier "
                            "step.", step, self.directory, type(err).__name__, str(err)[:300])
        return None

    def close(self) -> None:
        self.manager.close()
