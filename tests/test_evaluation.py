"""Evaluation end to end on a tiny random model: files written, metrics consistent with predictions."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from lsi.batch_decoding import LoadedModel
from lsi.decoding import TransformerLM
from lsi.evaluation import (
    EvalConfig,
    accuracy_at_subsets,
    evaluate,
    format_summary,
    grouped_answers,
    load_predictions,
    subset_vote_winners,
)
from lsi.models import get_config, init_params
from lsi.self_improve.voting import vote_answers
from lsi.tasks.answers import answers_equal
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


@pytest.mark.parametrize("answer_type, pool, golds", [
    ("number", ["7", "7.0", "-7", "1,000", "1000", "12", "x", None], ["7", "1000", "12"]),
    ("option", ["(a)", "A", "b", "(B)", "c", None], ["a", "b"]),
])
def test_subset_votes_equal_voting_each_subset_afresh(answer_type, pool, golds):
    """Grouped once per question, a subset's winner is the vote of its samples (ties to the first seen included)."""
    rng = np.random.default_rng(0)
    num_questions, m = 300, 8
    answers = [[pool[i] for i in rng.integers(len(pool), size=m)] for _ in range(num_questions)]
    examples = [Example(str(q), "q", golds[q % len(golds)]) for q in range(num_questions)]
    groups, group_is_correct = grouped_answers(answers, examples, answer_type)
    chosen = np.sort(np.argsort(rng.random((num_questions, m)), axis=-1)[:, :3], axis=-1)  # [q, 3]
    winners = subset_vote_winners(np.take_along_axis(groups, chosen, axis=-1), group_is_correct.shape[1] - 1)
    for q, (row, winner) in enumerate(zip(chosen, winners)):
        vote = vote_answers([answers[q][i] for i in row], answer_type)
        expected = groups[q, row[vote.agreeing[0]]] if vote.answer is not None else group_is_correct.shape[1] - 1
        assert winner == expected, [answers[q][i] for i in row]
        assert group_is_correct[q, winner] == (vote.answer is not None and
                                               answers_equal(vote.answer, examples[q].answer, answer_type))
    exact = accuracy_at_subsets(answers, examples, answer_type, sizes=(m,), repeats=5, seed=0)[str(m)]
    assert exact["accuracy"] == np.mean([
        answers_equal(vote_answers(a, answer_type).answer, e.answer, answer_type) for a, e in zip(answers, examples)])


def test_malformed_predictions_line_names_file_and_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('\n{not json\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: malformed JSON"):
        load_predictions(path)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="Unknown evaluation mode"):
        EvalConfig(modes=("beam",))
