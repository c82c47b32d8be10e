"""The paper's four prompt formats (PAPER.md Table 2) built from an exemplar set and a question.

    few-shot CoT       [CoT exemplars] \\n [Question] \\n A:                     -> " <reasoning> The answer is X."
    few-shot direct    [direct exemplars] \\n [Question] \\n A:                  -> " The answer is X."
    zero-shot CoT      [Question] \\n A: Let's think step by step.               -> " <reasoning> The answer is X."
    zero-shot direct   [Question] \\n A:                                         -> " The answer is X."

Direct exemplars are the CoT exemplars with the reasoning removed. Each exemplar block ends with a newline and blocks
are joined by the paper's '\\n', so consecutive blocks are separated by a blank line; the sampler stops on "\\n\\n"
followed by the next question's prefix.
"""

from __future__ import annotations

import enum

from lsi.tasks.answers import answer_sentence
from lsi.tasks.base import ExemplarSet

STEP_BY_STEP = "Let's think step by step."
DIRECT_ANSWER_PREFIX = "The answer is"


class PromptFormat(str, enum.Enum):
    FEW_SHOT_COT = "few_shot_cot"
    FEW_SHOT_DIRECT = "few_shot_direct"
    ZERO_SHOT_COT = "zero_shot_cot"
    ZERO_SHOT_DIRECT = "zero_shot_direct"

    @property
    def is_cot(self) -> bool:
        return self in (PromptFormat.FEW_SHOT_COT, PromptFormat.ZERO_SHOT_COT)

    @property
    def is_few_shot(self) -> bool:
        return self in (PromptFormat.FEW_SHOT_COT, PromptFormat.FEW_SHOT_DIRECT)


ALL_FORMATS = tuple(PromptFormat)


def plain_answer_sentence(answer: str, prefix: str = DIRECT_ANSWER_PREFIX) -> str:
    """'The answer is 9.' for an answer already written as it should read (an exemplar's "(b)" or "21 yards"); no
    doubled period. Model answers go through `lsi.tasks.answers.answer_sentence`, which canonicalises by type."""
    answer = answer.strip()
    return f"{prefix} {answer}" + ("" if answer.endswith(".") else ".")


def exemplar_answer(exemplars: ExemplarSet, index: int, cot: bool) -> str:
    """What exemplar `index` answers: its reasoning and answer sentence (CoT), or the answer sentence alone."""
    e = exemplars.exemplars[index]
    if cot:
        return f"{e.rationale} {plain_answer_sentence(e.answer, exemplars.answer_prefix)}"
    return plain_answer_sentence(e.answer, DIRECT_ANSWER_PREFIX)


def exemplar_block(exemplars: ExemplarSet, index: int, cot: bool) -> str:
    e = exemplars.exemplars[index]
    return f"{exemplars.question_prefix}{e.question}\nA: {exemplar_answer(exemplars, index, cot)}\n"


def question_block(question: str, question_prefix: str = "Q: ") -> str:
    return f"{question_prefix}{question.strip()}\n"


def build_prompt(fmt: PromptFormat | str, question: str, exemplars: ExemplarSet | None = None) -> str:
    """The prompt text of `question` in format `fmt`; few-shot formats need `exemplars`."""
    fmt = PromptFormat(fmt)
    prefix = exemplars.question_prefix if exemplars is not None else "Q: "
    if fmt.is_few_shot:
        if exemplars is None:
            raise ValueError(f"Format {fmt.value} needs an exemplar set.")
        shots = "".join(exemplar_block(exemplars, i, fmt.is_cot) + "\n" for i in range(len(exemplars.exemplars)))
        return f"{shots}{question_block(question, prefix)}A:"
    if fmt is PromptFormat.ZERO_SHOT_COT:
        return f"{question_block(question, prefix)}A: {STEP_BY_STEP}"
    return f"{question_block(question, prefix)}A:"


def build_target(fmt: PromptFormat | str, rationale: str, answer: str, answer_type: str) -> str:
    """The training target that follows the prompt: the kept reasoning path for CoT formats (which already ends in
    its answer sentence), 'The answer is X.' for direct formats (X written as the answer type writes it, e.g.
    '(b)'). Starts with a space, as text after 'A:' does."""
    fmt = PromptFormat(fmt)
    text = rationale.strip() if fmt.is_cot else answer_sentence(answer, answer_type, DIRECT_ANSWER_PREFIX)
    return " " + text


def stop_strings(exemplars: ExemplarSet | None = None) -> tuple[str, ...]:
    """Where a few-shot model has finished its answer and starts inventing the next exemplar."""
    prefix = (exemplars.question_prefix if exemplars is not None else "Q: ").strip() or "Premise:"
    return (f"\n\n{prefix}", f"\n{prefix}")
