"""DROP: discrete reasoning over paragraphs (in-domain in the paper; evaluated on dev since test labels are hidden).

Only the dev set is local (drop/drop_v0_dev.jsonl.gz, 9,536 questions over 579 passages, in OpenAI simple-evals form:
{context: "Passage: ...\\nQuestion: ...\\nAnswer:", completion, ref_text: "a|b|..."}). So the one file is split in
two by a stable hash of the PASSAGE (sha256 of the whitespace-collapsed passage text): a passage's questions are all
in the pool or all in eval, never in both. `eval_fraction` (default 0.5) is the share of passages that go to eval;
at 0.5 the pool holds about the 5k questions the paper sampled for training.

Question text: "<passage> <question>" (the paper's "Q: <passage> <question>"). Gold: `completion` (canonical DROP
form, see `drop_gold`), with the other `ref_text` answers as `alternatives`. Metadata carries `passage`, `question`,
`subset`, and `numeric` (the gold is a number: the paper's exact-match scoring is probably over those).

Football / non-football (each subset has its own 3-shot prompt, after least-to-most prompting): a passage is
"football" when it matches at least FOOTBALL_MIN_TERMS (2) distinct terms of FOOTBALL_TERMS, word-bounded:
touchdown, field goal, TD, quarterback/QB, kicker, interception, fumble, punt, kickoff/kick return, "N-yard" or yard(s),
end zone, NFL/AFC/NFC, Super Bowl, the position abbreviations RB/WR/TE, and the nickname of an NFL team. One term
alone is not enough, because each also appears in other passages (the Florida "Panthers" of hockey, "Cardinals" of the
church; "TD Garden" and "graveyard" are excluded by the patterns). On the 579 dev passages this marks 193 as football
(NFL game summaries and team histories; 2,944 questions) and 386 as non-football (6,592 questions).
"""

from __future__ import annotations

import functools
import os
import pathlib
import re

from lsi.tasks import loading
from lsi.tasks.answers import canonicalize, is_decimal_number
from lsi.tasks.base import Example, Task, data_file

DROP_FILE = "drop/drop_v0_dev.jsonl.gz"
FOOTBALL, NON_FOOTBALL = "football", "nonfootball"
FOOTBALL_MIN_TERMS = 2
_NFL_TEAMS = (
    "49ers|Bears|Bengals|Bills|Broncos|Browns|Buccaneers|Bucs|Cardinals|Chargers|Chiefs|Colts|Cowboys|Dolphins|Eagles"
    "|Falcons|Giants|Jaguars|Jets|Lions|Niners|Oilers|Packers|Panthers|Patriots|Raiders|Rams|Ravens|Redskins|Saints"
    "|Seahawks|Steelers|Texans|Titans|Vikings"
)
# (name, regex, case-sensitive?)
FOOTBALL_TERMS: tuple[tuple[str, str, bool], ...] = (
    ("touchdown", r"touchdowns?", False),
    ("field goal", r"field goals?", False),
    ("TD", r"TDs?(?! (?:Garden|Bank|Place|Centre|Center|Ameritrade))", True),
    ("quarterback", r"quarterbacks?|QB", False),
    ("kicker", r"kickers?", False),
    ("interception", r"interceptions?|intercepted", False),
    ("fumble", r"fumbles?|fumbled", False),
    ("punt", r"punts?|punter|punted", False),
    ("kickoff", r"kickoffs?|kick-off|kick returns?", False),
    ("yard", r"\d+-yard|yards?", False),
    ("end zone", r"end zone", False),
    ("NFL", r"NFL|AFC|NFC", True),
    ("Super Bowl", r"Super Bowl", False),
    ("position", r"RB|WR|TE", True),
    ("NFL team", _NFL_TEAMS, True),
)
_PLAIN_INTEGER = re.compile(r"0|[1-9]\d*")
_TERM_PATTERNS = tuple(
    (name, re.compile(rf"\b(?:{pattern})\b", 0 if case_sensitive else re.IGNORECASE))
    for name, pattern, case_sensitive in FOOTBALL_TERMS
)


def football_terms(passage: str) -> set[str]:
    return {name for name, pattern in _TERM_PATTERNS if pattern.search(passage)}


@functools.lru_cache(maxsize=4096)
def drop_subset(passage: str) -> str:
    """FOOTBALL or NON_FOOTBALL by the module's keyword rule."""
    return FOOTBALL if len(football_terms(passage)) >= FOOTBALL_MIN_TERMS else NON_FOOTBALL


def choose_drop_exemplars(example: Example) -> str:
    subset = example.metadata.get("subset")
    return subset if subset in (FOOTBALL, NON_FOOTBALL) else drop_subset(example.question)


def _split_context(context: str, path, line) -> tuple[str, str]:
    if not context.startswith("Passage:") or "\nQuestion:" not in context:
        raise ValueError(f"{path}:{line}: field 'context' is not 'Passage: ...\\nQuestion: ...\\nAnswer:'.")
    body = context[len("Passage:"):]
    if body.rstrip().endswith("Answer:"):
        body = body.rstrip()[: -len("Answer:")]
    passage, question = body.rsplit("\nQuestion:", 1)
    return " ".join(passage.split()), " ".join(question.split())


def load_drop(data_dir: str | os.PathLike | None = None) -> list[Example]:
    """All 9,536 dev questions, in file order, with `metadata["passage"]` for the split (read once per process and
    file version)."""
    path = data_file(DROP_FILE, data_dir)
    return list(_load_drop_file(path, path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=2)
def _load_drop_file(path: pathlib.Path, mtime_ns: int) -> tuple[Example, ...]:
    del mtime_ns  # part of the cache key only
    examples = []
    for line, record in loading.read_jsonl(path):
        passage, question = _split_context(loading.field(record, "context", path, line), path, line)
        gold = drop_gold(loading.field(record, "completion", path, line))
        alternatives = []
        for ref in str(record.get("ref_text", "")).split("|"):
            if ref.strip():
                ref = drop_gold(ref)
                if ref != gold and ref not in alternatives:
                    alternatives.append(ref)
        examples.append(Example(
            id=f"drop-dev-{line - 1:04d}",
            question=f"{passage} {question}",
            answer=gold,
            alternatives=tuple(alternatives),
            metadata={
                "source": f"{path.name}:{line}",
                "passage": passage,
                "question": question,
                "subset": drop_subset(passage),
                "numeric": is_decimal_number(gold),
            },
        ))
    return tuple(examples)


@functools.lru_cache(maxsize=65536)
def drop_gold(text: str) -> str:
    """The canonical DROP answer; a gold that lsi.tasks.answers cannot read as an answer (21 of the 9,536: ranges and
    scores such as "1426-1440" or "24-19", which it takes for expressions, and "never rotated there", which it takes
    for a negation) is kept as written, whitespace collapsed, so that `answers_equal` compares it as text."""
    text = text.strip()
    if _PLAIN_INTEGER.fullmatch(text):  # its own canonical form; skips the general parser for 2/3 of the answers
        return text
    canonical = canonicalize(text, "drop")
    return canonical if canonical is not None else " ".join(text.split())


def drop(data_dir=None, seed=0, pool_size=None, eval_size=None, eval_fraction: float = 0.5) -> Task:
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"drop: eval_fraction must be in (0, 1), got {eval_fraction}.")
    all_examples = loading.memoize_loader(lambda: load_drop(data_dir), "drop dev")

    def split(side: str):
        def load() -> list[Example]:
            is_eval = side == "eval"
            return [e for e in all_examples()
                    if loading.in_eval_bucket(e.metadata["passage"], eval_fraction, "drop") == is_eval]

        return load

    return loading.make_task(
        "drop", "drop", split("pool"), split("eval"),
        {FOOTBALL: loading.load_exemplars("drop_football"), NON_FOOTBALL: loading.load_exemplars("drop_nonfootball")},
        seed=seed, pool_size=pool_size, eval_size=eval_size, choose_exemplars=choose_drop_exemplars,
        description=f"DROP dev split by passage hash: eval_fraction={eval_fraction}; football/non-football prompts.",
    )
