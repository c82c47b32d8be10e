"""Where a result came from, written beside it: every stage's manifest.json and every eval's metrics.json carry a
`provenance` block, so a number read months later names the model it measured (path and content fingerprint), the
prompt style, the code (git commit, and whether the tree had uncommitted changes), the package versions, how many
hosts ran it, and the whole gin config of the invocation that wrote it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from lsi import lineage
from lsi.self_improve.manifest import package_versions


def model_provenance(model: str | os.PathLike) -> dict[str, Any]:
    """The model as given (a packaged name or a path), the file or folder it resolved to, and its fingerprint (the
    lineage's own, so the two always agree)."""
    from lsi.checkpoints.registry import resolve_model_path  # noqa: PLC0415

    return {"name": str(model), "path": str(resolve_model_path(model)), "fingerprint": lineage.fingerprint_model(model)}


def provenance(model: str | os.PathLike | None, prompter: Any = None, gin_config: str | None = None
               ) -> dict[str, Any]:
    """The provenance block of a result made by `model` (None for a stage that runs none) prompted by `prompter`.
    `gin_config` defaults to the process's gin config (what `lsi.main` writes to run_dir/config.gin)."""
    import jax  # noqa: PLC0415

    if gin_config is None:
        import gin  # noqa: PLC0415

        # One binding per line, however long: a path in a binding stays whole, so it can be searched for.
        gin_config = gin.config_str(max_line_length=1_000_000)
    return {
        "model": None if model is None else model_provenance(model),
        "prompt_style": None if prompter is None else prompter.describe(),
        "code": lineage.code_version(),
        "packages": package_versions(),
        "host_count": jax.process_count(),
        "device_count": jax.device_count(),
        "host": socket.gethostname(),
        "gin_config": gin_config,
    }
