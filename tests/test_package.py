"""The built wheel, installed into a fresh venv outside the checkout: `lsi --help` and a stage from a packaged gin file.

Offline: the wheel is built without build isolation and installed without dependencies; the fresh venv finds the
dependencies through a .pth line naming this venv's site-packages (which adds that folder only: this venv's own
editable lsi, installed by a .pth hook there, stays out). So it checks what the wheel itself carries (the package,
its gin configs and prompts, the console script), not dependency resolution.
"""

import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.helpers.runs import REPO
from tests.helpers.toy import save_tiny_checkpoint

# What the wheel is built from: the checkout's tracked source, copied so the build's own folders stay out of it.
SOURCES = ("setup.py", "README.md", "lsi", "gin_configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dist), str(source)], check=True, capture_output=True, timeout=600)
    (built,) = dist.glob("lsi-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> pathlib.Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (pathlib.Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    return venv


def test_the_wheel_carries_every_gin_config_and_prompt(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (REPO / "gin_configs").rglob("*.gin"):
        assert f"lsi/gin_configs/{config.relative_to(REPO / 'gin_configs')}" in names
    for prompts in (REPO / "lsi" / "tasks" / "prompts").glob("*.json"):
        assert f"lsi/tasks/prompts/{prompts.name}" in names


def test_installed_wheel_runs_help_and_a_stage_from_a_packaged_config(fresh_venv, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{fresh_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "XLA_FLAGS": "",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    where = subprocess.run([fresh_venv / "bin" / "python", "-c", "import lsi; print(lsi.__file__, lsi.__version__)"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(fresh_venv)), where
    help_text = subprocess.run([fresh_venv / "bin" / "lsi", "--help"], cwd=outside, env=env, capture_output=True,
                               text=True, timeout=300)
    assert help_text.returncode == 0 and "--stage" in help_text.stdout and "self_improve" in help_text.stdout

    model = save_tiny_checkpoint(tmp_path / "model")
    run_dir = tmp_path / "run"
    stage = subprocess.run([
        fresh_venv / "bin" / "lsi", "--gin_file=gin_configs/runs/quickstart.gin", f"--run_dir={run_dir}",
        f"--gin.lsi.Experiment.model='{model}'",
        "--gin.lsi.Experiment.task_kwargs={'pool_size': 4, 'eval_size': 3, 'config': {'operators': ('+',)}}",
        "--gin.lsi.SampleStageConfig.num_samples=2", "--gin.lsi.SampleStageConfig.max_new_tokens=4",
        "--gin.lsi.SampleStageConfig.num_shards=1", "--jax_cache_dir=", "--stage=sample"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=900)
    assert stage.returncode == 0, stage.stderr[-3000:]
    manifest = json.loads((run_dir / "round_1" / "arithmetic" / "samples" / "manifest.json").read_text())
    assert manifest["counts"]["samples_expected"] == 8
    config = (run_dir / "config.gin").read_text()  # the packaged quickstart's bindings, then the command line's
    assert "VoteStageConfig.min_vote_share = 0.7" in config and "SampleStageConfig.num_samples = 2" in config
    assert not list(outside.iterdir())  # nothing written where it ran
