"""StrategyQA: yes/no questions whose reasoning steps are implicit (out-of-domain in the paper, own 6-shot prompt).

pool = strategyqa/train.json (2,061), eval = strategyqa/dev.json (229): the unofficial 90/10 split of the official
train set by Segal et al. The paper evaluates on BIG-bench's question-only copy, strategyqa/task.json, which holds the
same 2,290 questions with no split; `load_bigbench` reads it (for cross-checks), it is not a split of the task.
Note: the paper's exemplar topics come from StrategyQA itself; our reworded Brooke Shields exemplar paraphrases a
question of dev.json, and the hamster, Spice Girls, frost, llama and pear ones paraphrase questions of train.json.
"""

from __future__ import annotations

import json
import os

from lsi.tasks import loading
from lsi.tasks.base import Example, data_file

STRATEGYQA_FILES = {"pool": "strategyqa/train.json", "eval": "strategyqa/dev.json"}
BIGBENCH_FILE = "strategyqa/task.json"


def load_strategyqa(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    path = data_file(STRATEGYQA_FILES[split], data_dir)
    examples = []
    for at, record in loading.read_json_array(path):
        answer = loading.field(record, "answer", path, at)
        if not isinstance(answer, bool):
            raise ValueError(f"{loading.where(path, at)}: field 'answer' is {answer!r}, not true/false.")
        examples.append(Example(
            id=f"strategyqa-{loading.field(record, 'qid', path, at)}",
            question=" ".join(loading.field(record, "question", path, at).split()),
            answer=loading.canonical_gold("yes" if answer else "no", "yes_no", path, at),
            metadata={"source": f"{path.name} ({at})", "term": record.get("term", "")},
        ))
    return examples


def load_bigbench(data_dir: str | os.PathLike | None = None) -> list[Example]:
    """BIG-bench's strategyqa task.json: examples[] of {input, target_scores{Yes, No}, target}."""
    path = data_file(BIGBENCH_FILE, data_dir)
    try:
        with loading.open_text(path) as f:  # undecodable bytes are an error naming the line
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from None
    examples = []
    for index, record in enumerate(loading.field(raw, "examples", path, "top level")):
        at = f"examples[{index}]"
        scores = loading.field(record, "target_scores", path, at)
        if scores.get("Yes") == scores.get("No"):
            raise ValueError(f"{loading.where(path, at)}: field 'target_scores' does not pick Yes or No: {scores}.")
        examples.append(Example(
            id=f"strategyqa-bigbench-{index:04d}",
            question=" ".join(loading.field(record, "input", path, at).split()),
            answer=loading.canonical_gold("yes" if scores.get("Yes", 0) > scores.get("No", 0) else "no", "yes_no",
                                          path, at),
        ))
    return examples


strategyqa = loading.split_file_task(
    "strategyqa", "yes_no", load_strategyqa,
    "StrategyQA: pool = train.json (2,061), eval = dev.json (229).")
