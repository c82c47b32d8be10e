"""The screen stage: every grid cell measured on the dev split alone, results and plot written, resumable."""

import dataclasses
import json

import gin
import pytest

from helpers.scripted_lm import ScriptedLM
from lsi.batch_decoding import LoadedModel
from lsi.lineage import LineageError
from lsi.main import Experiment, parse_gin, run_stage
from lsi.records import Prediction, PredictionSample, read_records
from lsi.screen import ScreenConfig, pseudo_label_quality
from lsi.vocab import load_vocabulary


@pytest.fixture(autouse=True)
def clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_screen_writes_every_cell_from_the_dev_split_only_and_resumes(tmp_path, monkeypatch):
    vocab = load_vocabulary("smollm2-135m-instruct")
    answer = vocab.encode(" 3 + 4 = 7. The answer is 7.")
    noise = tuple(vocab.encode(" The answer is 9.")[-2:-1])  # sampled now and then: votes are not unanimous
    lm = ScriptedLM(tuple(answer) + (vocab.eos_id,), vocab_size=49152, noise_tokens=noise, noise_logit=-4.0)
    monkeypatch.setattr(Experiment, "loaded_model", lambda self, ckpt: LoadedModel(lm, None, vocab, lm.max_length))
    monkeypatch.setattr(Experiment, "vocabulary", lambda self, ckpt: vocab)
    parse_gin([], [
        f"lsi.Experiment.run_dir = '{tmp_path}'",
        "lsi.Experiment.task = 'arithmetic'",
        "lsi.Experiment.task_kwargs = {'pool_size': 10, 'eval_size': 5, 'dev_size': 6}",
        "lsi.Experiment.screen = @lsi.ScreenConfig()",
        "lsi.ScreenConfig.temperatures = (0.3, 1.0)",
        "lsi.ScreenConfig.num_samples = 4",
        "lsi.ScreenConfig.subsample_sizes = (1, 4)",
        "lsi.ScreenConfig.dev_size = 6",
        "lsi.ScreenConfig.max_new_tokens = 16",
        "lsi.ScreenConfig.batch_size = 4",
    ])
    experiment = Experiment()
    task = experiment.task_obj()
    dev = [dataclasses.replace(e, answer=str(7 if i % 2 else 8)) for i, e in enumerate(task.load_dev())]
    monkeypatch.setattr(task, "load_dev", lambda: dev)
    monkeypatch.setattr(task, "load_eval", lambda: pytest.fail("the screen read the eval split"))
    monkeypatch.setattr(task, "load_pool", lambda: pytest.fail("the screen read the unlabeled pool"))
    results = run_stage(experiment, "screen")
    cells = {(c["style"], c["temperature"]): c for c in results["cells"]}
    assert set(cells) == {("plain", 0.3), ("plain", 1.0), ("chat", 0.3), ("chat", 1.0)}
    for (style, temperature), cell in cells.items():
        assert cell["n"] == 6 and cell["task"] == "arithmetic"
        directory = tmp_path / "screen" / "arithmetic" / style / f"t{temperature:g}"
        predictions = read_records(Prediction, directory / "self_consistency" / Prediction.FILE)
        assert [p.id for p in predictions] == [e.id for e in dev]
        assert json.loads((directory / "metrics.json").read_text())["prompt_style"] == style
        # The scripted model says 7 (greedy always; sampled paths now and then garbled): right where the gold is 7.
        assert cell["greedy"]["k"] == cell["self_consistency"]["k"] == 3 and cell["sc_minus_greedy"]["p_value"] == 1
        # Hotter sampling garbles more paths: fewer single paths are right, and fewer paths join the vote.
        everything = cell["pseudo_labels"][0]
        assert everything["precision"]["k"] == 3 and everything["coverage"] == 1.0
        if temperature == 0.3:
            assert cell["one_sample"]["value"] == 0.5 and everything["kept_paths"] == 24
        else:
            assert cell["one_sample"]["value"] < 0.5 and everything["kept_paths"] < 24
        assert [q["threshold"] for q in cell["pseudo_labels"]] == list(ScreenConfig().vote_share_thresholds)
    assert json.loads((tmp_path / "screen" / "results.json").read_text())["cells"] == json.loads(
        json.dumps(results["cells"]))
    assert (tmp_path / "screen" / "sc_minus_greedy.png").stat().st_size > 0
    # A rerun keeps every complete cell.
    monkeypatch.setattr("lsi.evaluation.BatchSampler.run", lambda *a, **k: pytest.fail("re-sampled a done cell"))
    assert run_stage(experiment, "screen")["cells"] == results["cells"]
    # Other dev questions (here: the task's own gold, not the patched one) are refused, not mixed with the cells.
    with pytest.raises(LineageError, match=r"t0.3 holds the screen stage's output of another config or other inputs:"
                                           r"\n  inputs.questions"):
        run_stage(Experiment(), "screen")


def test_pseudo_label_quality_counts_kept_questions_and_paths():
    def record(answers, vote, gold):
        share = answers.count(vote) / len(answers)
        samples = tuple(PredictionSample(f"... {a}", a, "stop", 3, -1.0) for a in answers)
        return Prediction(id="q", prompt_hash="h", samples=samples, vote=vote, vote_count=answers.count(vote),
                          vote_share=share, vote_share_of_parsed=share, tie=False, gold=gold, gold_alternatives=(),
                          correct=vote == gold)

    records = [record(["5", "5", "5", "6"], "5", "5"), record(["1", "2", "2", None], "2", "1"),
               record([None, None, None, None], None, "3")]
    everything = pseudo_label_quality(records, "number", 0.0)
    assert everything["questions"] == 2 and everything["kept_paths"] == 5
    assert everything["precision"]["k"] == 1 and everything["kept_paths_right"] == 3 / 5
    confident = pseudo_label_quality(records, "number", 0.7)
    assert confident["questions"] == 1 and confident["kept_paths_right"] == 1.0 and confident["coverage"] == 1 / 3
    nothing = pseudo_label_quality(records, "number", 0.9)
    assert nothing["questions"] == 0 and nothing["precision"] is None and nothing["kept_paths_right"] is None


def test_a_task_without_a_dev_split_cannot_be_screened():
    from helpers.toy import toy_task
    from lsi.screen import dev_examples

    with pytest.raises(ValueError, match="no labelled dev split"):
        dev_examples(toy_task(), 10)
