"""lsi: large language models that self-improve without labels (LMSI), in JAX. See README.md."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("lsi")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
    __version__ = "0.1.0+unknown"
