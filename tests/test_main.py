"""lsi.main: gin files parse and bind; the stages run end to end through the entry point on a tiny model."""

import json
import pathlib

import gin
import pytest

from helpers.toy import save_tiny_checkpoint, tiny_stage_bindings
from lsi.lineage import LineageError, fingerprint_model
from lsi.main import Experiment, parse_gin, run_stage
from lsi.stage_lineage import seal

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


def test_missing_gin_file_names_where_it_was_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        parse_gin(["gin_configs/runs/no_such_run.gin"], [])
    message = str(error.value)
    assert "--gin_file gin_configs/runs/no_such_run.gin" in message
    assert str(tmp_path / "gin_configs/runs/no_such_run.gin") in message
    assert str(REPO / "gin_configs/runs/no_such_run.gin") in message
    with pytest.raises(FileNotFoundError, match=f"searched {tmp_path / 'absent.gin'} \\("):
        parse_gin([str(tmp_path / "absent.gin")], [])


def test_gin_search_paths_find_files_and_includes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = tmp_path / "my_configs"
    (configs / "runs").mkdir(parents=True)
    (configs / "base.gin").write_text("lsi.Experiment.task = 'chain_sum'\n")
    (configs / "runs" / "mine.gin").write_text("include 'base.gin'\nlsi.Experiment.run_dir = 'runs/mine'\n")
    parse_gin(["runs/mine.gin"], [], search_paths=[str(configs)])
    assert Experiment().task == "chain_sum" and Experiment().run_dir == "runs/mine"
    with pytest.raises(FileNotFoundError, match=f"searched .*{configs / 'nothing.gin'}"):
        parse_gin(["nothing.gin"], [], search_paths=[str(configs)])


def _flags(argv):
    from absl import flags

    from lsi.main import _define_flags, rewrite_gin_args

    flag_values = flags.FlagValues()
    _define_flags(flag_values)
    flag_values(rewrite_gin_args(["lsi", *argv]))
    return flag_values


def test_command_line_takes_t5x_gin_flags_a_run_dir_and_requires_a_stage():
    from absl import flags

    parsed = _flags(["--stage=eval", "--gin.lsi.TrainConfig.steps=100", "--gin.lsi.Experiment.task='svamp'",
                     "--run_dir=runs/x", "--gin_search_paths=a,b"])
    assert parsed.gin_param == ["lsi.TrainConfig.steps = 100", "lsi.Experiment.task = 'svamp'"]
    assert parsed.run_dir == "runs/x" and parsed.gin_search_paths == ["a", "b"] and parsed.stage == ["eval"]
    with pytest.raises(flags.IllegalFlagValueError, match="stage"):
        _flags(["--gin_file=x.gin"])  # no silent full pipeline


def test_installed_command_help_lists_stages_and_flags():
    import shutil
    import subprocess

    lsi = shutil.which("lsi") or str(pathlib.Path(__import__("sys").executable).parent / "lsi")
    result = subprocess.run([lsi, "--help"], capture_output=True, text=True, timeout=300)
    for expected in ("self_improve", "round_<r>/<task>/samples/", "--gin_file", "--stage", "--run_dir",
                     "--restart_stage", "--gin_search_paths"):
        assert expected in result.stdout + result.stderr, expected


@pytest.mark.parametrize("value", ["0", "-2"])
def test_round_below_one_is_a_flag_error(value):
    from absl import flags

    from lsi.main import _define_flags

    flag_values = flags.FlagValues()
    _define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match=f"--round counts from 1, got {value}"):
        flag_values(["lsi.main", f"--round={value}", "--stage=vote"])
    ok = flags.FlagValues()
    _define_flags(ok)
    ok(["lsi.main", "--round=2", "--stage=vote"])
    assert ok.round == 2 and ok.stage == ["vote"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_model"))


@pytest.mark.parametrize("style", ["plain", "chat"])
def test_stages_run_in_order_through_the_entry_point(style, tiny_checkpoint, tmp_path):
    # A random model states no parseable answer, so the vote keeps nothing: allowed here, labels come by hand.
    parse_gin([], [*tiny_stage_bindings(tmp_path, tiny_checkpoint), f"lsi.Experiment.prompt_style = '{style}'"])
    experiment = Experiment()
    manifest = run_stage(experiment, "sample")["arithmetic"]
    assert manifest["counts"]["samples_expected"] == 12 and manifest["config"]["prompt_style"] == style
    origin = manifest["provenance"]  # where the samples came from, beside them
    assert origin["model"] == {"name": str(tiny_checkpoint), "path": str(tiny_checkpoint),
                               "fingerprint": fingerprint_model(tiny_checkpoint)}
    assert origin["prompt_style"]["prompt_style"] == style and origin["host_count"] == 1
    assert origin["code"]["git_commit"] == manifest["code"]["git_commit"] and origin["packages"]["lsi"]
    assert f"Experiment.prompt_style = '{style}'" in origin["gin_config"]
    votes = run_stage(experiment, "vote")["arithmetic"]
    assert votes["counts"]["questions"] == 4 and votes["config"]["allow_empty"]
    # A random model answers nothing parseable, so no pseudo-labels exist: write two by hand to feed the next stages.
    labels = [{"question_id": f"x{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "vote_count": 2,
               "num_parsed": 2, "num_samples": 3, "vote_share": 2 / 3, "vote_share_of_parsed": 1.0, "tie": False,
               "paths": [{"sample_index": 0, "text": f" {i} + 1 = {i + 1}. The answer is {i + 1}."}]}
              for i in range(2)]
    round_dir = tmp_path / "round_1" / "arithmetic"
    (round_dir / "votes" / "pseudo_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    with pytest.raises(LineageError, match=r"pseudo_labels.jsonl changed after the vote stage wrote it"):
        run_stage(experiment, "format")
    seal(round_dir / "votes", ["pseudo_labels.jsonl"])  # recorded as the vote's output, as if it had voted them
    formats = run_stage(experiment, "format")["arithmetic"]
    trained = run_stage(experiment, "train")
    assert trained["steps"] == 2 and (tmp_path / "round_1" / "train" / "hf" / "config.json").exists()
    assert formats["counts"]["examples"] == 4 * formats["counts"]["kept_paths"]
    assert formats["config"]["prompt_style"] == style
    train_manifest = json.loads((tmp_path / "round_1" / "train" / "manifest.json").read_text())
    assert train_manifest["config"]["prompt_style"] == style
    assert train_manifest["provenance"]["model"]["fingerprint"] == fingerprint_model(tiny_checkpoint)
    assert json.loads((round_dir / "votes" / "manifest.json").read_text())["config"]["prompt_style"] == style
    after = run_stage(experiment, "eval", eval_model="trained")["arithmetic"]
    assert after["modes"]["cot_greedy"]["accuracy"]["n"] == 3 and after["prompt_style"] == style
    generation = json.loads((tmp_path / "round_1" / "train" / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2  # SmolLM2's EOS is its end-of-turn token, <|im_end|>
    assert (tmp_path / "eval" / "round_1" / "arithmetic" / "self_consistency" / "predictions.jsonl").exists()
    metrics = run_stage(experiment, "eval", eval_tag="before")["arithmetic"]
    assert json.loads((tmp_path / "eval" / "before" / "arithmetic" / "metrics.json").read_text()) == json.loads(
        json.dumps(metrics, default=str))
    assert sorted(p.name for p in (round_dir / "samples").glob("samples-*")) == [
        "samples-00000-of-00002.jsonl", "samples-00001-of-00002.jsonl"]
    with pytest.raises(ValueError, match="Unknown stage"):
        run_stage(experiment, "fly")
    if style == "plain":
        _reruns_refuse_changed_inputs_and_restart_replaces_them(tmp_path)
    # The other style never resumes or keeps this one's samples or training.
    gin.bind_parameter("lsi.Experiment.prompt_style", "chat" if style == "plain" else "plain")
    with pytest.raises(LineageError, match=r"another config or other inputs:\n  inputs.prompt_style"):
        run_stage(Experiment(), "sample")
    with pytest.raises(LineageError, match=r"another config or other inputs:\n  inputs.prompt_style"):
        run_stage(Experiment(), "train")


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


def _reruns_refuse_changed_inputs_and_restart_replaces_them(run_dir):
    from lsi.self_improve.formats import FormatStageConfig  # noqa: PLC0415
    from lsi.stage_lineage import Restart  # noqa: PLC0415
    from lsi.training.optimizers import OptimizerConfig  # noqa: PLC0415

    formats = run_dir / "round_1" / "arithmetic" / "formats"
    # A finished train rerun with a new learning rate trains nothing new and must not claim the new rate.
    gin.bind_parameter("lsi.TrainConfig.optimizer", OptimizerConfig(learning_rate=0.5))
    with pytest.raises(LineageError, match=r"train stage's output of another config.*\n  config.optimizer: "):
        run_stage(Experiment(), "train")
    gin.bind_parameter("lsi.TrainConfig.optimizer", OptimizerConfig())
    # An eval rerun with another model must not keep the first model's predictions.
    base_model = Experiment().model
    gin.bind_parameter("lsi.Experiment.model", str(run_dir / "round_1" / "train" / "hf"))
    with pytest.raises(LineageError, match=r"eval stage's output of another config or other inputs:\n  inputs.model"):
        run_stage(Experiment(), "eval", eval_tag="before")
    gin.bind_parameter("lsi.Experiment.model", base_model)
    # New shard count: refused, then restarted as a set (no old shard beside the new ones), and training downstream
    # of it replaced because its input changed.
    gin.bind_parameter("lsi.Experiment.format", FormatStageConfig(num_shards=2))
    experiment = Experiment()
    with pytest.raises(LineageError, match="config.num_shards: 4 -> 2"):
        run_stage(experiment, "format")
    experiment.restart = Restart("format")
    run_stage(experiment, "format")
    assert sorted(p.name for p in formats.glob("*.tfrecord")) == [
        "examples-00000-of-00002.tfrecord", "examples-00001-of-00002.tfrecord"]
    assert run_stage(experiment, "train")["resumed_from"] is None  # trained again on the new shards
    gin.bind_parameter("lsi.Experiment.format", FormatStageConfig())


def test_generation_stages_feed_table6_and_figure3(tmp_path, monkeypatch):
    from helpers.scripted_lm import ScriptedLM  # noqa: PLC0415

    from lsi import lineage, provenance  # noqa: PLC0415
    from lsi import main as lsi_main  # noqa: PLC0415
    from lsi.batch_decoding import LoadedModel  # noqa: PLC0415
    from lsi.vocab import load_vocabulary  # noqa: PLC0415

    vocab = load_vocabulary("smollm2-135m-instruct")
    script = " How many legs do 3 spiders have in total?\n3 * 8 = 24. The answer is 24.\n\nQ:"
    lm = ScriptedLM(tuple(vocab.encode(script)), vocab_size=49152)
    loaded = []
    monkeypatch.setattr(Experiment, "loaded_model",
                        lambda self, ckpt: loaded.append(ckpt) or LoadedModel(lm, None, vocab, lm.max_length))
    monkeypatch.setattr(Experiment, "vocabulary", lambda self, ckpt: vocab)
    monkeypatch.setattr(lineage, "fingerprint_model", lambda ckpt: f"sha256 of {ckpt}")
    monkeypatch.setattr(provenance, "model_provenance", lambda ckpt: {"name": ckpt})  # no file to resolve
    parse_gin([], [
        f"lsi.Experiment.run_dir = '{tmp_path}'",
        "lsi.Experiment.model = 'base-model'",
        "lsi.Experiment.task = 'arithmetic'",
        "lsi.Experiment.task_kwargs = {'pool_size': 12, 'eval_size': 3}",
        "lsi.Experiment.questions = @lsi.QuestionGenConfig()",
        "lsi.QuestionGenConfig.num_seed_questions = 4",
        "lsi.QuestionGenConfig.num_prompts = 2",
        "lsi.QuestionGenConfig.samples_per_prompt = 2",
        "lsi.QuestionGenConfig.filter_samples = 2",
        "lsi.QuestionGenConfig.max_question_tokens = 16",
        "lsi.QuestionGenConfig.filter_max_new_tokens = 48",
        "lsi.Experiment.exemplars = @lsi.PromptGenConfig()",
        "lsi.PromptGenConfig.templates = 2",
        "lsi.PromptGenConfig.shots = 3",
        "lsi.PromptGenConfig.max_new_tokens = 32",
    ])
    experiment = Experiment()
    questions = run_stage(experiment, "questions")
    assert questions["counts"]["kept"] == 1 and loaded == ["base-model"]
    pool_file = tmp_path / "questions" / "generated_pool.jsonl"
    assert json.loads(pool_file.read_text())["question"] == "How many legs do 3 spiders have in total?"
    exemplars = run_stage(experiment, "exemplars")
    assert exemplars["counts"]["templates"] == 2
    assert sorted(p.name for p in (tmp_path / "exemplars").glob("generated_*.json")) == [
        "generated_00.json", "generated_01.json"]

    # Reruns keep complete work.
    monkeypatch.setattr(lsi_main, "generate_questions", lambda *a, **k: pytest.fail("generated questions again"))
    monkeypatch.setattr(lsi_main, "generate_exemplars", lambda *a, **k: pytest.fail("generated exemplars again"))
    assert run_stage(Experiment(), "questions") == questions
    assert run_stage(Experiment(), "exemplars") == exemplars

    # Figure 3: the task is prompted with the generated templates, rotated by question.
    gin.bind_parameter("lsi.Experiment.generated_exemplars", True)
    task = Experiment().task_obj()
    chosen = {task.choose_exemplars(q) for q in task.load_eval() + task.load_pool()}
    assert chosen == {"generated_00", "generated_01"}
    shown = task.exemplars_for(task.load_eval()[0]).exemplars
    pool_questions = {q.question for q in task.load_pool()}
    assert len(shown) == 3 and all(e.answer == "24" and e.rationale.endswith("3 * 8 = 24.") for e in shown)
    assert all(e.question in pool_questions for e in shown)

    # Table 6: the generated pool is a jsonl task the sample stage reads.
    gin.bind_parameter("lsi.Experiment.generated_exemplars", False)
    gin.bind_parameter("lsi.Experiment.question_task", "arithmetic")
    gin.bind_parameter("lsi.Experiment.task", "jsonl")
    gin.bind_parameter("lsi.Experiment.task_kwargs", {"pool_path": str(pool_file), "answer_type": "number",
                                                      "exemplar_file": "gsm8k"})
    pool = Experiment().task_obj().load_pool()
    assert [q.question for q in pool] == ["How many legs do 3 spiders have in total?"]


def test_generated_exemplars_without_the_stage_is_a_clear_error(tmp_path):
    parse_gin([], [f"lsi.Experiment.run_dir = '{tmp_path}'", "lsi.Experiment.generated_exemplars = True"])
    with pytest.raises(FileNotFoundError, match="run --stage=exemplars first"):
        Experiment().task_obj()


def test_formatted_task_names_are_valid_seqio_names_whatever_the_run_folder():
    import re

    name = Experiment(run_dir="runs/lr-3e-5 (try 2)").formatted_task_name(1, "arithmetic")
    assert name == "lsi_lr_3e_5__try_2__round1_arithmetic"
    assert re.fullmatch(r"[\w\d\.\:_#]+", name)  # the pattern seqio.Task enforces on its names
