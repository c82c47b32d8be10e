"""lsi.tasks: every loader against the real files in $LSI_DATA_DIR (counts from shared/data/SOURCES.md), split
disjointness, prompt rendering, the DROP subset rule, reasoning-gym determinism, the generic JSONL task, error
messages, and a SeqIO round trip."""

import functools
import gzip
import json
import re

import pytest

from lsi.tasks import PromptFormat, build_prompt, get_task, task_names
from lsi.tasks import drop as drop_module
from lsi.tasks import procedural
from lsi.tasks.answers import canonicalize, parse_answer
from lsi.tasks.base import PROMPTS_DIR, ExemplarSet, data_dir
from lsi.tasks.loading import EvalOnlyTaskError
from lsi.tasks.prompting import exemplar_block, stop_strings

pytestmark = pytest.mark.skipif(not data_dir().is_dir(), reason=f"no benchmark data at {data_dir()} (set LSI_DATA_DIR)")

# (task, pool count or None for evaluation-only, eval count), from shared/data/SOURCES.md
FILE_TASK_COUNTS = [
    ("gsm8k", 7473, 1319),
    ("svamp", None, 1000),
    ("aqua", None, 254),
    ("arc_challenge", 299, 1172),
    ("openbookqa", 4957, 500),
    ("anli_r1", 1000, 1000),
    ("anli_r2", 1000, 1000),
    ("anli_r3", 1198, 1200),
    ("mnli", None, 9815),
    ("strategyqa", 2061, 229),
]
PROCEDURAL = ("arithmetic", "gsm_symbolic", "chain_sum", "leg_counting")


@functools.lru_cache(maxsize=None)
def task(name):
    return get_task(name)


def test_registry_names():
    assert set(task_names()) == {
        "gsm8k", "svamp", "drop", "arc_challenge", "openbookqa", "anli_r1", "anli_r2", "anli_r3", "mnli", "aqua",
        "strategyqa", "arithmetic", "gsm_symbolic", "chain_sum", "leg_counting", "jsonl"}
    with pytest.raises(KeyError, match="known tasks"):
        get_task("no_such_task")


@pytest.mark.parametrize("name,pool_count,eval_count", FILE_TASK_COUNTS)
def test_file_task_counts_and_disjoint_splits(name, pool_count, eval_count):
    t = task(name)
    evaluation = t.load_eval()
    assert len(evaluation) == eval_count
    assert all(e.answer for e in evaluation)
    assert all(canonicalize(e.answer, t.answer_type) == e.answer for e in evaluation)
    if pool_count is None:
        with pytest.raises(EvalOnlyTaskError, match=name):
            t.load_pool()
        return
    pool = t.load_pool()
    assert len(pool) == pool_count
    assert not {e.question for e in pool} & {e.question for e in evaluation}
    assert not {e.id for e in pool} & {e.id for e in evaluation}


def test_drop_splits_by_passage():
    t = task("drop")
    pool, evaluation = t.load_pool(), t.load_eval()
    assert len(pool) + len(evaluation) == 9536
    assert 0.4 < len(evaluation) / 9536 < 0.6
    assert not {e.metadata["passage"] for e in pool} & {e.metadata["passage"] for e in evaluation}
    first = evaluation[0]
    assert first.question == f"{first.metadata['passage']} {first.metadata['question']}"
    # the same split on every run: a fixed example lands on a fixed side
    assert [e.id for e in evaluation[:3]] == [e.id for e in get_task("drop").load_eval()[:3]]
    multi = next(e for e in pool + evaluation if e.alternatives)
    assert multi.answer not in multi.alternatives
    assert get_task("drop", pool_size=100).load_pool() == sorted(
        get_task("drop", pool_size=100).load_pool(), key=lambda e: int(e.id.rsplit("-", 1)[1]))


def test_drop_subset_rule():
    football = ("Coming off their home win over the Bengals, the Vikings flew to Charlotte. In the first quarter, "
                "QB Brett Favre completed a 12-yard TD pass, and kicker Ryan Longwell added a 40-yard field goal.")
    assert drop_module.drop_subset(football) == "football"
    history = "In 1625 the French troops fought the Spanish, and the Cardinal's men seized the town."
    assert drop_module.drop_subset(history) == "nonfootball"
    hockey = "The Canucks beat the Florida Panthers at TD Garden in the fourth round."  # one football term only
    assert drop_module.drop_subset(hockey) == "nonfootball"
    rows = [json.loads(line) for line in gzip.open(data_dir() / drop_module.DROP_FILE, "rt", encoding="utf-8")]
    known = {"Coming off their home win over the Bengals, the Vikings": "football",
             "The irony of a Cardinal attacking the troops of a Pope": "nonfootball",
             "Advancing to the 2011 Stanley Cup Finals": "nonfootball",
             "In the city, the age distribution of the population": "nonfootball"}
    for start, subset in known.items():
        context = next(r["context"] for r in rows if r["context"].startswith("Passage: " + start))
        passage = context[len("Passage: "):].rsplit("\nQuestion:", 1)[0]
        assert drop_module.drop_subset(passage) == subset, start
    t = task("drop")
    everything = t.load_pool() + t.load_eval()
    assert {e.metadata["subset"] for e in everything} == {"football", "nonfootball"}
    example = next(e for e in everything if e.metadata["subset"] == "football")
    assert t.exemplars_for(example).name == "drop_football"
    prompt = build_prompt("few_shot_cot", example.question, t.exemplars_for(example))
    assert "So the answer is 21 yards.\n\nQ: " in prompt and prompt.endswith(f"Q: {example.question}\nA:")
    # an example without metadata (e.g. read back from a file) is routed by the same rule on its text
    bare = type(example)(id="x", question=example.question)
    assert t.choose_exemplars(bare) == "football"


def test_gold_answers_and_question_formats():
    gsm = task("gsm8k").load_pool()[0]
    assert gsm.id == "gsm8k-train-00000" and gsm.answer == "72"
    assert gsm.question.startswith("Natalia sold clips to 48 of her friends")
    svamp = task("svamp").load_eval()[0]
    assert svamp.question == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
                              "How much do you have to pay to buy each pack?") and svamp.answer == "51"
    aqua = task("aqua").load_eval()[0]
    assert aqua.question.endswith(
        "Answer Choices: (a) 5(√3 + 1) (b) 6(√3 + √2) (c) 7(√3 – 1) (d) 8(√3 – 2) (e) None of these")
    assert aqua.answer == "a"
    obqa = task("openbookqa").load_pool()[0]
    assert obqa.question == ("The sun is responsible for (a) puppies learning new tricks (b) children growing up and "
                             "getting old (c) flowers wilting in a vase (d) plants sprouting, blooming and wilting")
    assert obqa.answer == "d"
    # ARC: answer keys "1"-"4" map to (a)-(d), options end with a period
    raw = [json.loads(line) for line in open(data_dir() / "arc_challenge/ARC-Challenge-Test.jsonl")]
    numeric = next(r for r in raw if r["answerKey"] in "1234")
    arc = {e.id: e for e in task("arc_challenge").load_eval()}[f"arc_challenge-{numeric['id']}"]
    letter = "abcd"[int(numeric["answerKey"]) - 1]
    assert arc.answer == letter
    text = numeric["question"]["choices"][int(numeric["answerKey"]) - 1]["text"]
    assert f"({letter}) {text.rstrip('.')}." in arc.question
    nli = task("anli_r1").load_pool()[0]  # gold_label "c"
    assert nli.answer == "no"
    assert task("anli_r1").load_eval()[0].answer == "yes"  # label "entailment"
    raw = [json.loads(line) for line in open(data_dir() / "anli/test.jsonl")]
    neutral = next(i for i, r in enumerate(raw) if r["label"] == "neutral")  # R1 rows come first
    assert task("anli_r1").load_eval()[neutral].answer == "it is not possible to tell"
    assert nli.question.startswith('Premise:\n"Linguistics is the scientific study of language')
    assert nli.question.endswith('\nBased on this premise, can we conclude the hypothesis "Form and meaning are the '
                                 'only aspects of language linguistics is concerned with." is true?\nOPTIONS:\n- yes'
                                 '\n- no\n- it is not possible to tell')
    assert {e.answer for e in task("anli_r3").load_eval()} == {"yes", "no", "it is not possible to tell"}
    assert {e.answer for e in task("strategyqa").load_eval()} == {"yes", "no"}


def test_strategyqa_questions_are_the_bigbench_ones():
    from lsi.tasks.strategyqa import load_bigbench

    examples = load_bigbench()
    assert len(examples) == 2290  # one question ("Bob Marley's face") is there twice, as in train.json
    bigbench = {e.question: e.answer for e in examples}
    t = task("strategyqa")
    assert all(bigbench[e.question] == e.answer for e in t.load_pool() + t.load_eval())


GSM8K_Q = ("Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
           "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
           "egg. How much in dollars does she make every day at the farmers' market?")


def test_gsm8k_prompts_render_exactly():
    t = task("gsm8k")
    example = t.load_eval()[0]
    assert example.question == GSM8K_Q and example.answer == "18"
    exemplars = t.exemplars_for(example)
    assert build_prompt(PromptFormat.ZERO_SHOT_DIRECT, example.question, exemplars) == f"Q: {GSM8K_Q}\nA:"
    assert build_prompt(PromptFormat.ZERO_SHOT_COT, example.question, exemplars) == (
        f"Q: {GSM8K_Q}\nA: Let's think step by step.")
    cot = build_prompt(PromptFormat.FEW_SHOT_COT, example.question, exemplars)
    assert cot.startswith(
        "Q: A grove has 15 trees. The workers will plant more trees today, and when they finish the grove will have 21 "
        "trees. How many trees do the workers plant today?\nA: The grove starts with 15 trees and ends with 21 trees. "
        "The difference is what was planted: 21 - 15 = 6. The answer is 6.\n\nQ: A parking lot holds 3 cars")
    assert cot.endswith("Olivia has 23 - 15 = 8 dollars left. The answer is 8.\n\n" f"Q: {GSM8K_Q}\nA:")
    assert cot.count("\n\nQ: ") == 8
    direct = build_prompt(PromptFormat.FEW_SHOT_DIRECT, example.question, exemplars)
    assert direct.startswith("Q: A grove has 15 trees. The workers will plant more trees today, and when they finish "
                             "the grove will have 21 trees. How many trees do the workers plant today?\nA: The answer "
                             "is 6.\n\nQ: A parking lot")
    assert direct.endswith(f"The answer is 8.\n\nQ: {GSM8K_Q}\nA:")


def test_other_task_prompts():
    nli = task("mnli")
    example = nli.load_eval()[0]
    prompt = build_prompt("few_shot_cot", example.question, nli.exemplars_for(example))
    assert prompt.startswith('Premise:\n"In principle, cream skimming')
    assert prompt.endswith(f"\n\n{example.question}\nA:") and "Q: " not in prompt
    assert "The answer is it is not possible to tell.\n\nPremise:" in prompt
    assert stop_strings(nli.exemplars_for(example)) == ("\n\nPremise:", "\nPremise:")
    assert build_prompt("zero_shot_direct", example.question) == f"Q: {example.question}\nA:"
    arc = task("arc_challenge")
    prompt = build_prompt("few_shot_direct", arc.load_eval()[0].question, arc.exemplars_for(arc.load_eval()[0]))
    assert "(a) dry palms. (b) wet palms." in prompt and "\nA: The answer is (a).\n\n" in prompt
    aqua = task("aqua")
    prompt = build_prompt("few_shot_cot", aqua.load_eval()[0].question, aqua.exemplars_for(aqua.load_eval()[0]))
    assert "Answer Choices: (a) 50 (b) 45 (c) 65 (d) 78 (e) 64\nA: " in prompt


EXPECTED_SHOTS = {"gsm8k": 8, "openbookqa": 4, "arc_challenge": 4, "nli": 6, "aqua": 4, "strategyqa": 6,
                  "drop_football": 3, "drop_nonfootball": 3, "arithmetic": 8, "chain_sum": 6, "leg_counting": 4}


@pytest.mark.parametrize("name", sorted(EXPECTED_SHOTS))
def test_exemplar_files(name):
    path = PROMPTS_DIR / f"{name}.json"
    exemplars = ExemplarSet.from_file(path)
    answer_type = json.loads(path.read_text())["answer_type"]
    assert len(exemplars.exemplars) == EXPECTED_SHOTS[name]
    for index, exemplar in enumerate(exemplars.exemplars):
        block = exemplar_block(exemplars, index, cot=True)
        answer_text = block[block.index("\nA: ") + 4:]
        assert parse_answer(answer_text, answer_type, strict=True) == canonicalize(exemplar.answer, answer_type)
    if name == "nli":
        assert [e.answer for e in exemplars.exemplars] == [
            "it is not possible to tell", "yes", "no", "it is not possible to tell", "yes", "no"]
        assert exemplars.question_prefix == ""
    if name.startswith("drop"):
        assert exemplars.answer_prefix == "So the answer is"
    if name == "drop_football":
        assert [e.answer for e in exemplars.exemplars] == ["21 yards", "10 points", "2"]


def test_exemplar_file_override(tmp_path):
    assert get_task("svamp", exemplar_file="arithmetic").exemplar_sets["default"].name == "arithmetic"
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"name": "mine", "exemplars": [
        {"question": "What is 1 + 1?", "rationale": "1 + 1 = 2.", "answer": "2"}]}))
    assert get_task("gsm8k", exemplar_file=str(custom)).exemplar_sets["default"].name == "mine"
    drop = get_task("drop", exemplar_file={"football": str(custom)})
    assert drop.exemplar_sets["football"].name == "mine"
    assert drop.exemplar_sets["nonfootball"].name == "drop_nonfootball"
    with pytest.raises(FileNotFoundError, match="no_such_prompt"):
        get_task("gsm8k", exemplar_file="no_such_prompt")


def test_subsampling_is_seeded_and_keeps_order():
    a = get_task("gsm8k", pool_size=50, eval_size=20, seed=3)
    b = get_task("gsm8k", pool_size=50, eval_size=20, seed=3)
    c = get_task("gsm8k", pool_size=50, seed=4)
    assert [e.id for e in a.load_pool()] == [e.id for e in b.load_pool()]
    assert [e.id for e in a.load_pool()] != [e.id for e in c.load_pool()]
    assert [e.id for e in a.load_pool()] == sorted(e.id for e in a.load_pool())
    assert len(a.load_eval()) == 20


@pytest.mark.parametrize("name", PROCEDURAL)
def test_reasoning_gym_tasks(name):
    t = get_task(name, seed=7, pool_size=300, eval_size=100)
    pool, dev, evaluation = t.load_pool(), t.load_dev(), t.load_eval()
    assert (len(pool), len(dev), len(evaluation)) == (300, 200, 100)
    for first, second in ((pool, evaluation), (pool, dev), (dev, evaluation)):
        assert not {e.question for e in first} & {e.question for e in second}
        assert not {e.metadata["key"] for e in first} & {e.metadata["key"] for e in second}
    assert len({e.question for e in pool}) == 300
    exemplar_questions = {x.question for x in t.exemplar_sets["default"].exemplars}
    assert not exemplar_questions & {e.question for e in pool + dev + evaluation}
    procedural._UNIVERSES.clear()  # drawn afresh, not read from the cache
    again = get_task(name, seed=7, pool_size=100, eval_size=100)  # deterministic, and a smaller pool is a prefix
    def rows(examples):
        return [(e.id, e.question, e.answer) for e in examples]

    assert rows(again.load_pool()) == rows(pool[:100])
    assert rows(again.load_eval()) == rows(evaluation)
    other = get_task(name, seed=8, pool_size=100, eval_size=10)
    assert [e.question for e in other.load_pool()] != [e.question for e in pool[:100]]
    assert all(canonicalize(e.answer, "number") == e.answer for e in pool + evaluation)


def test_arithmetic_is_two_term_small_addition_and_subtraction():
    t = get_task("arithmetic", pool_size=500, eval_size=200)
    pattern = re.compile(r"^(?:What is (?P<a>\d{1,2}) (?P<op>[-+]) (?P<b>\d{1,2})\?"
                         r"|(?:Solve|Compute|Evaluate:) (?P<c>\d{1,2}) (?P<op2>[-+]) (?P<d>\d{1,2})\.)$")
    for example in t.load_pool() + t.load_eval():
        m = pattern.match(example.question)
        assert m, example.question
        a, op, b = (m["a"], m["op"], m["b"]) if m["a"] else (m["c"], m["op2"], m["d"])
        assert int(example.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    # pinned: the pool hands out problems in hash order; 021910 is the stream index of this one's first draw
    assert get_task("arithmetic").load_pool()[0].id == "arithmetic-pool-s0-021910"


def test_generic_jsonl_task(tmp_path):
    records = [{"qid": f"q{i}", "problem": f"What is {i} plus {i}?", "solution": {"value": str(2 * i)}}
               for i in range(40)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    kwargs = dict(question_field="problem", answer_field="solution.value", answer_type="number", id_field="qid")
    t = get_task("jsonl", path=str(path), eval_fraction=0.3, **kwargs)
    pool, evaluation = t.load_pool(), t.load_eval()
    assert len(pool) + len(evaluation) == 40 and pool and evaluation
    assert not {e.question for e in pool} & {e.question for e in evaluation}
    by_id = {e.id: e for e in pool + evaluation}
    assert by_id["q7"].answer == "14" and by_id["q7"].question == "What is 7 plus 7?"
    assert t.exemplar_sets["default"].name == "gsm8k"
    # separate files; the pool may be unlabeled
    unlabeled = tmp_path / "pool.jsonl"
    unlabeled.write_text('{"problem": "What is 2 plus 3?"}\n\n{"problem": "What is 4 plus 4?"}\n')
    t2 = get_task("jsonl", pool_path=str(unlabeled), eval_path=str(path), question_field="problem",
                  answer_field="solution.value", answer_type="number", exemplar_file="arithmetic")
    assert [e.id for e in t2.load_pool()] == ["pool-1", "pool-3"] and t2.load_pool()[0].answer is None
    assert len(t2.load_eval()) == 40 and t2.exemplar_sets["default"].name == "arithmetic"


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": "2"}\n{"question": "c", "answ\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        get_task("jsonl", eval_path=str(bad)).load_eval()
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"question": "a", "answer": "1"}\n{"question": "b"}\n')
    with pytest.raises(ValueError, match=r"missing\.jsonl:2: record has no field 'answer'"):
        get_task("jsonl", eval_path=str(missing)).load_eval()
    with pytest.raises(ValueError, match=r"missing\.jsonl:1: record has no field 'text'"):
        get_task("jsonl", eval_path=str(missing), question_field="text").load_eval()
    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text('{"id": 1, "question": "a", "answer": "1"}\n{"id": 1, "question": "b", "answer": "2"}\n')
    with pytest.raises(ValueError, match="'1' appears at records 0 and 1"):
        get_task("jsonl", eval_path=str(duplicate), id_field="id").load_eval()
    wrong_type = tmp_path / "wrong.jsonl"
    wrong_type.write_text('{"question": "a", "answer": "many"}\n')
    with pytest.raises(ValueError, match=r"wrong\.jsonl:1: gold answer 'many'"):
        get_task("jsonl", eval_path=str(wrong_type)).load_eval()


def test_invalid_utf8_names_file_and_line(tmp_path):
    from lsi.tasks import loading

    # Far more than one read-ahead block before the bad byte, so the line must be found, not guessed.
    lines = [json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}).encode() + b"\n" for i in range(2000)]
    lines[1500] = b'{"question": "caf\xe9?", "answer": "1"}\n'  # Latin-1, not UTF-8
    data = b"".join(lines)
    (tmp_path / "latin.jsonl").write_bytes(data)
    with gzip.open(tmp_path / "latin.jsonl.gz", "wb") as f:
        f.write(data)
    for name in ("latin.jsonl", "latin.jsonl.gz"):
        with pytest.raises(ValueError, match=rf"{re.escape(name)}:1501: not valid UTF-8 \(byte 0xe9"):
            get_task("jsonl", eval_path=str(tmp_path / name)).load_eval()
    (tmp_path / "rows.csv").write_bytes(b"question,answer\nWhat is 1 + 1?,2\nWhat is \xff?,3\n")
    with pytest.raises(ValueError, match=r"rows\.csv:3: not valid UTF-8"):
        list(loading.read_delimited(tmp_path / "rows.csv"))
    (tmp_path / "array.json").write_bytes(b'[\n{"question": "a"},\n{"question": "\xc3("}\n]\n')
    with pytest.raises(ValueError, match=r"array\.json:3: not valid UTF-8"):
        list(loading.read_json_array(tmp_path / "array.json"))
    (tmp_path / "prompts.json").write_bytes(b'{"exemplars": [\n{"question": "caf\xe9", "rationale": "r", "answer": "1"}]}')
    with pytest.raises(ValueError, match=r"prompts\.json:2: not valid UTF-8"):
        ExemplarSet.from_file(tmp_path / "prompts.json")


def test_missing_data_names_the_path_and_variable(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        get_task("gsm8k", data_dir=tmp_path).load_pool()
    assert str(tmp_path / "gsm8k" / "train.jsonl") in str(error.value) and "LSI_DATA_DIR" in str(error.value)
    with pytest.raises(FileNotFoundError, match="LSI_DATA_DIR"):
        get_task("drop", data_dir=tmp_path).load_eval()


def test_malformed_line_in_a_dataset_file(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        '{"question": "q", "answer": "x #### 5"}\n{"question": "r", "answer": "no final answer"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:2: field 'answer' has no '####'"):
        get_task("gsm8k", data_dir=tmp_path).load_eval()


def test_seqio_round_trip():
    import seqio

    from lsi.tasks.seqio_tasks import register_seqio_task
    from lsi.vocab import load_vocabulary

    from lsi.tasks.prompt_style import Prompter

    vocabulary = load_vocabulary("smollm2-135m-instruct")
    t = get_task("arc_challenge", eval_size=4)
    # The default is the vocabulary's own (chat) style: the target is the assistant turn, ending with its token.
    chat_name = register_seqio_task(t, vocabulary, fmt="few_shot_cot", split="eval")
    chat_row = next(seqio.get_mixture_or_task(chat_name).get_dataset(
        sequence_length=None, split="eval", shuffle=False).as_numpy_iterator())
    assert vocabulary.detokenize(chat_row["targets"]) == f"The answer is ({t.load_eval()[0].answer}).<|im_end|>"
    assert chat_row["inputs_pretokenized"].decode().endswith("<|im_start|>assistant\n")
    name = register_seqio_task(t, vocabulary, fmt="few_shot_cot", split="eval", prompter=Prompter())
    again = register_seqio_task(t, vocabulary, fmt="few_shot_cot", split="eval",  # re-registering replaces it
                                prompter=Prompter())
    assert name == again == "lsi_arc_challenge_few_shot_cot"
    dataset = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="eval", shuffle=False)
    rows = list(dataset.as_numpy_iterator())
    examples = t.load_eval()
    assert [r["id"].decode() for r in rows] == [e.id for e in examples]
    first, example = rows[0], examples[0]
    expected_prompt = build_prompt("few_shot_cot", example.question, t.exemplars_for(example))
    assert vocabulary.decode(first["inputs"].tolist()) == expected_prompt
    assert first["inputs"][-1] != vocabulary.eos_id and first["targets"][-1] == vocabulary.eos_id
    assert vocabulary.decode(first["targets"].tolist()) == f" The answer is ({example.answer})."
    assert first["inputs_pretokenized"].decode() == expected_prompt
