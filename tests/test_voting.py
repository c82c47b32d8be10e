"""Majority voting: ties, unparseable samples, single paths, equal answers written differently."""

import random

import pytest

from lsi.self_improve.voting import vote_answers
from lsi.tasks.answers import answers_equal, parse_answer


def test_majority_and_agreeing_paths():
    vote = vote_answers(["108", "96", "108", None, "108"], "number")
    assert vote.answer == "108" and vote.count == 3 and vote.agreeing == (0, 2, 4)
    assert vote.num_parsed == 4 and vote.num_samples == 5
    assert vote.share_of_all == 3 / 5 and vote.share_of_parsed == 3 / 4 and not vote.tie


def test_tie_goes_to_the_first_seen_answer_and_is_flagged():
    vote = vote_answers(["7", "9", "9", "7"], "number")
    assert vote.answer == "7" and vote.tie and vote.agreeing == (0, 3)
    assert vote_answers(["9", "7", "7", "9"], "number").answer == "9"


def test_all_unparseable_gives_no_answer():
    vote = vote_answers([None, None, None], "number")
    assert vote.answer is None and vote.count == 0 and vote.share_of_all == 0.0 and vote.agreeing == ()
    assert vote_answers([], "number").answer is None


def test_single_path():
    vote = vote_answers(["42"], "number")
    assert vote.answer == "42" and vote.share_of_all == 1.0 and not vote.tie


def test_numbers_differing_only_in_format_vote_together():
    texts = ["... so it costs 1,000 dollars. The answer is 1,000.", "The answer is 1000.0.", "The answer is $1000.",
             "The answer is 999."]
    answers = [parse_answer(t, "number") for t in texts]
    vote = vote_answers(answers, "number")
    assert vote.count == 3 and float(vote.answer) == 1000.0
    # Even unparsed-canonical spellings group by value.
    assert vote_answers(["1,000", "1000.0", "999"], "number").count == 2


def test_scientific_notation_votes_with_its_value_not_its_prefix():
    texts = ["The answer is 1e3.", "The answer is 1,000.", "The answer is 1.", "The answer is 2.5E-2."]
    vote = vote_answers([parse_answer(t, "number") for t in texts], "number")
    assert vote.answer == "1000" and vote.agreeing == (0, 1)


def test_option_letters_in_different_casing_vote_together():
    answers = [parse_answer(t, "option") for t in ["The answer is (B).", "The answer is b).", "The answer is (c)."]]
    vote = vote_answers(answers, "option")
    assert vote.answer == "b" and vote.count == 2
    assert vote_answers(["B", "b", "(b)", "c"], "option").count == 3


def test_nli_and_yes_no_labels():
    answers = [parse_answer(t, "nli") for t in ["The answer is it is not possible to tell.", "The answer is no.",
                                                 "The answer is it's not possible to tell."]]
    assert vote_answers(answers, "nli").answer == "it is not possible to tell"
    assert vote_answers(["yes", "no", "no"], "yes_no").answer == "no"


def _pairwise_vote(answers, answer_type):
    """The vote by its definition: each answer joins the first group whose first answer `answers_equal` it."""
    groups = []
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        group = next((g for g in groups if answers_equal(g[0], answer, answer_type)), None)
        if group is None:
            groups.append((answer, [index]))
        else:
            group[1].append(index)
    if not groups:
        return None, ()
    best = max(len(members) for _, members in groups)
    representative, members = next(g for g in groups if len(g[1]) == best)
    return representative, tuple(members)


@pytest.mark.parametrize("answer_type, pool", [
    # Numbers within the relative tolerance of 1e-6 of each other, written several ways, and junk.
    ("number", ["1000000", "1,000,000", "1000000.5", "1000001.5", "1e6", "999999.2", "7", "7.0", "-7", "x", None]),
    ("option", ["(a)", "A", "b", "(B)", "c", "z", None]),
    ("drop", ["Puerto Rican", "puerto rican", "34", "34.0", "thirty", None]),
])
def test_the_keyed_vote_equals_the_pairwise_definition(answer_type, pool):
    rng = random.Random(0)
    for _ in range(400):
        answers = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        vote = vote_answers(answers, answer_type)
        assert (vote.answer, vote.agreeing) == _pairwise_vote(answers, answer_type), answers
