"""lsi: large language models that self-improve without labels (LMSI), in JAX. See README.md."""

import importlib.metadata

from lsi.native_logs import default_log_level

# Here, in the package, so that it precedes every lsi module's first import of TensorFlow or JAX (lsi.main's
# included): their C++ logging shows errors only unless the user sets TF_CPP_MIN_LOG_LEVEL (see lsi.native_logs).
default_log_level()

try:
    __version__ = importlib.metadata.version("lsi")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
    __version__ = "0.1.0+unknown"
