"""Evaluation end to end on a tiny random model: files written, metrics consistent with predictions."""

import dataclasses
import json

import jax
import pytest

from lsi.batch_decoding import LoadedModel
from lsi.decoding import TransformerLM
from lsi.evaluation import EvalConfig, accuracy_at_subsets, evaluate, format_summary, load_predictions
from lsi.models import get_config, init_params
from lsi.tasks.base import PROMPTS_DIR, Example, ExemplarSet, Task
from lsi.vocab import load_vocabulary

EXAMPLES = [Example(f"q{i}", f"What is {i} + {i + 1}?", str(2 * i + 1)) for i in range(5)]


@pytest.fixture(scope="module")
def setup():
    cfg = get_config("tiny", vocab_size=49152, max_length=1024)
    params = init_params(cfg, jax.random.PRNGKey(0))
    vocab = load_vocabulary("smollm2-135m-instruct")
    task = Task("toy_sums", "number", load_pool=lambda: [], load_eval=lambda: list(EXAMPLES),
                exemplar_sets={"default": ExemplarSet.from_file(PROMPTS_DIR / "gsm8k.json")})
    return cfg, params, vocab, task


def test_all_modes_write_predictions_and_metrics(setup, tmp_path):
    cfg, params, vocab, task = setup
    config = EvalConfig(num_samples=4, max_new_tokens=6, subsample_sizes=(1, 2, 4), subsample_repeats=3,
                        batch_size=4)
    result = evaluate(task, LoadedModel(TransformerLM(cfg), params, vocab, cfg.max_length), config, tmp_path,
                      progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["modes"].keys() == {"standard", "cot_greedy", "self_consistency"}
    for mode in ("standard", "cot_greedy", "self_consistency"):
        records = load_predictions(tmp_path / mode / "predictions.jsonl")
        assert [r.id for r in records] == [e.id for e in EXAMPLES]
        expected_samples = 4 if mode == "self_consistency" else 1
        assert all(len(r.samples) == expected_samples for r in records)
        accuracy = result["modes"][mode]["accuracy"]
        assert accuracy["n"] == 5 and accuracy["k"] == sum(r.correct for r in records)
        assert all(r.gold == e.answer for r, e in zip(records, EXAMPLES))
    sc = result["modes"]["self_consistency"]
    assert sc["accuracy_at_m"]["4"]["accuracy"] == sc["accuracy"]["value"]
    assert sum(b["count"] for b in sc["calibration"]) == 5
    assert "toy_sums" in format_summary(result)



def test_greedy_sampled_with_self_consistency_equals_separate_runs(setup, tmp_path):
    """Greedy CoT rides along as sample 0 of self-consistency's batch: both modes' predictions equal the ones of
    a run of each mode alone."""
    cfg, params, vocab, task = setup
    model = LoadedModel(TransformerLM(cfg), params, vocab, cfg.max_length)
    config = EvalConfig(modes=("cot_greedy", "self_consistency"), num_samples=3, max_new_tokens=6,
                        subsample_sizes=(1, 3), subsample_repeats=2, batch_size=4)
    together = evaluate(task, model, config, tmp_path / "together", progress=False)
    assert together["modes"]["cot_greedy"]["sampled_with"] == ["self_consistency"]
    for mode in config.modes:
        alone_config = dataclasses.replace(config, modes=(mode,))
        alone = evaluate(task, model, alone_config, tmp_path / mode, progress=False)
        assert "sampled_with" not in alone["modes"][mode]
        shared = load_predictions(tmp_path / "together" / mode / "predictions.jsonl")
        separate = load_predictions(tmp_path / mode / mode / "predictions.jsonl")
        assert [[s.text for s in r.samples] for r in shared] == [[s.text for s in r.samples] for r in separate]
        assert [r.vote for r in shared] == [r.vote for r in separate]
        assert together["modes"][mode]["accuracy"] == alone["modes"][mode]["accuracy"]

def test_subset_accuracy_uses_votes_of_subsets():
    examples = [Example("a", "q", "1"), Example("b", "q", "2")]
    answers = [["1", "1", "3", "1"], ["5", "5", "2", "5"]]
    result = accuracy_at_subsets(answers, examples, "number", sizes=(1, 4), repeats=200, seed=0)
    assert result["4"]["accuracy"] == 0.5  # a is right by majority, b is wrong
    # m'=1: a right with p=3/4, b right with p=1/4 -> expected accuracy 0.5 as well; check it is an average.
    assert 0.4 < result["1"]["accuracy"] < 0.6 and result["1"]["subsets"] == 200


def test_malformed_predictions_line_names_file_and_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('\n{not json\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: malformed JSON"):
        load_predictions(path)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="Unknown evaluation mode"):
        EvalConfig(modes=("beam",))
