"""Majority voting over parsed answers (self-consistency), PAPER.md section 2, steps 3-4.

Unparseable samples (answer None) do not vote. Answers are grouped with `answers_equal`, so "1,000" and "1000.0", or
"(B)" and "b", vote together once parsed. Ties are broken by the answer seen first among the tied ones (sample order
is the sampler's sample index, so the rule is deterministic); a tie is flagged so it can be counted.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from lsi.tasks.answers import answers_equal


@dataclasses.dataclass(frozen=True)
class Vote:
    answer: str | None  # the voted answer; None when no sample parsed
    count: int  # samples whose answer equals `answer`
    num_parsed: int  # samples with a parseable answer
    num_samples: int  # all samples, parsed or not
    tie: bool  # another answer had the same count
    agreeing: tuple[int, ...]  # indices of the samples that reached `answer`

    @property
    def share_of_parsed(self) -> float:
        return self.count / self.num_parsed if self.num_parsed else 0.0

    @property
    def share_of_all(self) -> float:
        """The paper's confidence: paths leading to the voted answer / m."""
        return self.count / self.num_samples if self.num_samples else 0.0


def vote_answers(answers: Sequence[str | None], answer_type: str) -> Vote:
    """The majority answer of `answers` (one per sample, None when unparseable)."""
    groups: list[tuple[str, list[int]]] = []  # (representative, sample indices), in first-seen order
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        for representative, members in groups:
            if answers_equal(representative, answer, answer_type):
                members.append(index)
                break
        else:
            groups.append((answer, [index]))
    num_parsed = sum(len(members) for _, members in groups)
    if not groups:
        return Vote(None, 0, 0, len(answers), False, ())
    best = max(len(members) for _, members in groups)
    tied = [(rep, members) for rep, members in groups if len(members) == best]
    representative, members = tied[0]  # first seen wins a tie
    return Vote(representative, best, num_parsed, len(answers), len(tied) > 1, tuple(members))
