"""Self-generated questions and exemplars, driven by a scripted model so answers parse."""

import json

import pytest

from lsi.batch_decoding import LoadedModel
from lsi.self_improve.question_gen import (
    PromptGenConfig,
    QuestionGenConfig,
    generate_exemplars,
    generate_questions,
    generation_prompts,
    normalize_question,
    read_generated_pool,
    rotating_task,
    split_rationale,
)
from lsi.tasks.base import Example, ExemplarSet
from lsi.vocab import load_vocabulary
from tests.helpers.scripted_lm import ScriptedLM
from tests.helpers.toy import toy_task


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary("smollm2-135m-instruct")


def _scripted(vocab, text, noise=()):
    return ScriptedLM(tuple(vocab.encode(text)), vocab_size=49152, noise_tokens=tuple(noise))


def test_prompts_shuffle_seeds_and_end_with_q():
    config = QuestionGenConfig(num_prompts=3, questions_per_prompt=3, seed=1)
    prompts = generation_prompts(["a?", "b?", "c?", "d?"], config)
    assert len(prompts) == 3 and all(p.endswith("\nQ:") and p.count("Q: ") == 3 for p in prompts)
    assert prompts == generation_prompts(["a?", "b?", "c?", "d?"], config)
    assert len(set(prompts)) > 1


def test_normalize_and_split():
    assert normalize_question("  What is 3 + 4?\nQ: next") == "What is 3 + 4?"
    assert normalize_question("Q:  How   many apples?") == "How many apples?"
    assert split_rationale(" 3 + 4 = 7. The answer is 7.") == "3 + 4 = 7."
    assert split_rationale("no answer sentence") == "no answer sentence"


def test_generated_questions_are_deduplicated_and_filtered(vocab, tmp_path):
    # Every generation is the same question: one candidate survives de-duplication; every CoT path answers 7.
    lm = _scripted(vocab, " How many legs do 2 spiders and 1 bird have together?\n7 + 0 = 7. The answer is 7.\n")
    config = QuestionGenConfig(num_seed_questions=4, questions_per_prompt=3, num_prompts=4, samples_per_prompt=2,
                               filter_samples=3, max_question_tokens=24, filter_max_new_tokens=32, batch_size=4)
    manifest = generate_questions(toy_task(num_pool=6), LoadedModel(lm, None, vocab, 4096), config, tmp_path,
                                  progress=False)
    counts = manifest["counts"]
    assert counts["generated"] == 8 and counts["candidates"] == 1 and counts["duplicate"] == 7
    kept = read_generated_pool(tmp_path / "generated_pool.jsonl")
    assert counts["kept"] == len(kept) == 1
    assert kept[0]["question"] == "How many legs do 2 spiders and 1 bird have together?"
    assert set(kept[0]) == {"id", "question"}


def test_generated_exemplars_make_rotating_templates(vocab, tmp_path):
    lm = _scripted(vocab, " First add the numbers: 3 + 6 = 9. The answer is 9.\n\nQ:")
    paths = generate_exemplars(toy_task(num_pool=10), LoadedModel(lm, None, vocab, 4096),
                               PromptGenConfig(templates=2, shots=3, max_new_tokens=24, batch_size=4), tmp_path,
                               progress=False)
    sets = [ExemplarSet.from_file(p) for p in paths]
    assert [len(s.exemplars) for s in sets] == [3, 3]
    assert sets[0].exemplars[0].rationale == "First add the numbers: 3 + 6 = 9."
    assert sets[0].exemplars[0].answer == "9"
    questions = {e.question for s in sets for e in s.exemplars}
    assert len(questions) == 6
    rotated = rotating_task(toy_task(), paths)
    chosen = {rotated.choose_exemplars(Example(f"x{i}", "q")) for i in range(40)}
    assert chosen == {"generated_00", "generated_01"}
    assert rotated.choose_exemplars(Example("x1", "q")) == rotated.choose_exemplars(Example("x1", "other"))
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"]["usable"] >= 6


def test_too_few_usable_rationales_is_a_clear_error(vocab, tmp_path):
    lm = _scripted(vocab, " I am not sure about this one.\n\nQ:")
    with pytest.raises(ValueError, match="only 0 usable zero-shot rationales"):
        generate_exemplars(toy_task(num_pool=4), LoadedModel(lm, None, vocab, 4096),
                           PromptGenConfig(templates=1, shots=2, max_new_tokens=12, batch_size=4), tmp_path,
                           progress=False)
