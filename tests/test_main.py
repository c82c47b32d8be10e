"""lsi.main: gin files parse and bind; the stages run end to end through the entry point on a tiny model."""

import json
import pathlib

import gin
import pytest

from helpers.toy import save_tiny_checkpoint
from lsi.main import Experiment, parse_gin, run_stage

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_CONFIGS = sorted((REPO / "gin_configs" / "runs").glob("*.gin"))


@pytest.fixture(autouse=True)
def clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=[p.stem for p in RUN_CONFIGS])
def test_every_run_config_parses_and_binds(path):
    parse_gin([str(path)], ["lsi.Experiment.run_dir = '/tmp/unused'"])
    experiment = Experiment()
    assert experiment.run_dir == "/tmp/unused" and experiment.task and experiment.model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_model"))


def test_stages_run_in_order_through_the_entry_point(tiny_checkpoint, tmp_path):
    parse_gin([], [
        f"lsi.Experiment.run_dir = '{tmp_path}'",
        f"lsi.Experiment.model = '{tiny_checkpoint}'",
        "lsi.Experiment.task = 'arithmetic'",
        "lsi.Experiment.task_kwargs = {'pool_size': 4, 'eval_size': 3}",
        "lsi.Experiment.sample = @lsi.SampleStageConfig()",
        "lsi.SampleStageConfig.num_samples = 3",
        "lsi.SampleStageConfig.max_new_tokens = 6",
        "lsi.SampleStageConfig.num_shards = 2",
        "lsi.Experiment.eval = @lsi.EvalConfig()",
        "lsi.EvalConfig.modes = ('cot_greedy', 'self_consistency')",
        "lsi.EvalConfig.num_samples = 2",
        "lsi.EvalConfig.max_new_tokens = 6",
        "lsi.EvalConfig.subsample_sizes = (1, 2)",
        "lsi.Experiment.train = @lsi.TrainConfig()",
        "lsi.TrainConfig.steps = 2",
        "lsi.TrainConfig.batch_size = 2",
        "lsi.TrainConfig.seq_length = 512",
        "lsi.TrainConfig.checkpoint_every = 1",
        "lsi.TrainConfig.progress_bar = False",
    ])
    experiment = Experiment()
    manifest = run_stage(experiment, "sample")["arithmetic"]
    assert manifest["counts"]["samples_expected"] == 12
    assert run_stage(experiment, "vote")["arithmetic"]["counts"]["questions"] == 4
    # A random model answers nothing parseable, so no pseudo-labels exist: write two by hand to feed the next stages.
    labels = [{"question_id": f"x{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "vote_count": 2,
               "num_parsed": 2, "num_samples": 3, "vote_share": 2 / 3, "vote_share_of_parsed": 1.0, "tie": False,
               "paths": [{"sample_index": 0, "text": f" {i} + 1 = {i + 1}. The answer is {i + 1}."}]}
              for i in range(2)]
    round_dir = tmp_path / "round_1" / "arithmetic"
    (round_dir / "votes" / "pseudo_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    formats = run_stage(experiment, "format")["arithmetic"]
    trained = run_stage(experiment, "train")
    assert trained["steps"] == 2 and (tmp_path / "round_1" / "train" / "hf" / "config.json").exists()
    assert formats["counts"]["examples"] == 4 * formats["counts"]["kept_paths"]
    after = run_stage(experiment, "eval", eval_model="trained")["arithmetic"]
    assert after["modes"]["cot_greedy"]["accuracy"]["n"] == 3
    assert (tmp_path / "eval" / "round_1" / "arithmetic" / "self_consistency" / "predictions.jsonl").exists()
    metrics = run_stage(experiment, "eval", eval_tag="before")["arithmetic"]
    assert json.loads((tmp_path / "eval" / "before" / "arithmetic" / "metrics.json").read_text()) == json.loads(
        json.dumps(metrics, default=str))
    assert sorted(p.name for p in (round_dir / "samples").glob("samples-*")) == [
        "samples-00000-of-00002.jsonl", "samples-00001-of-00002.jsonl"]
    with pytest.raises(ValueError, match="Unknown stage"):
        run_stage(experiment, "fly")


def test_a_rerun_keeps_complete_eval_modes(tiny_checkpoint, tmp_path, monkeypatch):
    parse_gin([], [
        f"lsi.Experiment.run_dir = '{tmp_path}'",
        f"lsi.Experiment.model = '{tiny_checkpoint}'",
        "lsi.Experiment.task_kwargs = {'pool_size': 4, 'eval_size': 3}",
        "lsi.Experiment.eval = @lsi.EvalConfig()",
        "lsi.EvalConfig.modes = ('cot_greedy',)",
        "lsi.EvalConfig.max_new_tokens = 4",
    ])
    experiment = Experiment()
    first = run_stage(experiment, "eval")
    monkeypatch.setattr("lsi.evaluation.BatchSampler.run", lambda *a, **k: pytest.fail("re-sampled a done mode"))
    normalised = lambda result: json.loads(json.dumps(result, default=str))  # noqa: E731
    assert normalised(run_stage(experiment, "eval")) == normalised(first)
