"""Procedural tasks from reasoning-gym: arithmetic (the default small-model task), gsm_symbolic, chain_sum and
leg_counting.

How the splits are drawn. The research protocol needs three disjoint splits from ONE distribution: the unlabeled
`pool`, the labelled `dev` split (every choice is made there) and the `eval` split. reasoning-gym's generators are
not uniform over their problem spaces (arithmetic picks 1 or 2 digits with equal odds, so the 242 one-digit
problems carry half the mass and the 20,000 two-digit ones the other half), and the splits must hold DISTINCT
problems, so which problems a split gets depends on how far into a de-duplicated stream it reads: the first hundred
distinct problems are mostly the frequent (easy) ones, the thousandth is almost always a rare (hard) one. Any rule
that hands a split "the first N distinct problems it meets" therefore makes a small split easier than a large one.
(The previous design drew each split from its own stream and gave a 400-problem pool 64% two-digit operands
against 81% for a 400-problem eval split; one shared stream, each split taking its first N in stream order, still
gives a 160-problem pool 51-58% against 80-82% for eval.) So the order of the stream must not decide membership:
1. The universe: ONE stream, reasoning-gym seeded with a 62-bit hash of (task, `seed`) (`reasoning_gym_seed`),
   de-duplicated by problem KEY, read until it holds `universe_size` distinct problems (default 10,000), or for
   DRAWS_PER_PROBLEM draws per wanted problem, after which the space is taken to be exhausted. Items the task
   rejects and problems equal to a default exemplar's question are skipped. The universe does not depend on any
   split size, so it fixes the task's distribution: a problem drawn uniformly from the universe.
2. A problem's split is a stable hash of (task, key), the same for every seed: eval 20%, dev 10%, pool 70% of the
   space (SPLIT_SHARES; eval's share is the one the two-split design used). No key is in two splits, for any seeds.
3. Each split hands out its problems in the order of a second stable hash, of (task, seed, key), and a split of
   size N is the first N. That order is independent of the problems' content, so every split, and every prefix of
   it (sampling's `max_questions` takes a prefix of the pool), is a uniform sample without replacement from the
   same universe: all three splits are identically distributed whatever their sizes, eval does not change with the
   pool size, and a smaller pool is a prefix of a larger one. For arithmetic the universe has 89% two-digit
   operands and mean |answer| 65.5; every split of pool 160..2,000, dev 200, eval 400..500 agrees with it within
   sampling error (tests/test_procedural_splits.py).
A split of size N needs a universe of about N / share problems: the default one holds pool 7,000, dev 1,000 and
eval 2,000 on average; a larger request is an error that says to raise `universe_size` (which changes every split).
Drawing it takes about 1 s (arithmetic: 28k draws); the splits of a task share one (`universe` caches a few).
The task's distribution is thus uniform over the universe's distinct problems, not reasoning-gym's own mixture:
arithmetic's 242 one-digit problems are all in it but make 2-3% of it, not half. No set of thousands of distinct
problems of this space can do otherwise, and the old eval split was already 81% two-digit operands.
The key is the expression for arithmetic and chain_sum (so "What is 3 + 4?" and "Compute 3 + 4." are one problem)
and the question text otherwise; a problem is worded as at its first draw.
Ids: "{task}-{split}-s{seed}-{index}", index = the reasoning-gym item index of the problem's first draw.

Settings (override with `config={...}`, passed to reasoning-gym's dataset config):
- arithmetic: basic_arithmetic with min_terms = max_terms = 2, min_digits = 1, max_digits = 2, operators ("+", "-"),
  allow_parentheses = False (reasoning-gym's parenthesized generator draws negative operands), format_style =
  "natural" ("What is 47 - 15?", "Solve ...", "Compute ...", "Evaluate: ..."). reasoning-gym's simple generator draws
  operands from 0..10**digits inclusive, so it can write 100; items with an operand over 99 are skipped so every
  operand has 1-2 digits. Results may be negative ("12 - 30").
- chain_sum: 3-4 terms of 1-2 digits (reasoning-gym's defaults, 2-6 terms of 1-4 digits, are far past a 135M model).
- leg_counting: 2-4 kinds of animals, 1-5 of each (defaults: 3-10 kinds, 1-15 each). The question is shortened to
  its last sentence ("How many legs are there in total if you have 2 dogs, 1 spider?"); the instruction line before
  it says the same.
- gsm_symbolic: reasoning-gym's defaults (difficulty 1.0), prompted with the GSM8K exemplars; the suffix "Give the
  result as your final answer. Do not include units." is removed to match them.
Default sizes: pool 2,000, dev 200, eval 500 (`pool_size`, `dev_size`, `eval_size`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from typing import Any

from lsi.tasks import loading
from lsi.tasks.base import Example, Task

SPLITS = ("pool", "dev", "eval")
# Shares of the problem space, in hash order: eval first, so its bucket is the one the two-split design used.
SPLIT_SHARES = {"eval": 0.2, "dev": 0.1, "pool": 0.7}
DEFAULT_POOL_SIZE = 2000
DEFAULT_DEV_SIZE = 200
DEFAULT_EVAL_SIZE = 500
DEFAULT_UNIVERSE_SIZE = 10_000
DRAWS_PER_PROBLEM = 10  # the stream stops here when the space is smaller than the universe asked for
_HASH_BUCKETS = 1_000_000
_EXPRESSION = re.compile(r"\d+(?: [-+] \d+)+")
_GSM_SYMBOLIC_SUFFIX = " Give the result as your final answer. Do not include units."
_LEG_QUESTION = re.compile(r"(how many legs are there in total if you have .*?\?)\s*$", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class ProceduralSpec:
    """How one reasoning-gym dataset becomes a task."""

    dataset: str  # reasoning-gym's name
    config: dict[str, Any]
    exemplars: str
    key: Callable[[dict[str, Any]], str]  # the problem's identity for splitting and de-duplication
    question: Callable[[dict[str, Any]], str] = lambda item: " ".join(item["question"].split())
    accept: Callable[[dict[str, Any]], bool] = lambda item: True


def _operands(item: dict[str, Any]) -> list[int]:
    return [int(t) for t in re.findall(r"\d+", item["metadata"]["expression"])]


def _leg_question(item: dict[str, Any]) -> str:
    m = _LEG_QUESTION.search(item["question"])
    text = m.group(1) if m else item["question"]
    text = " ".join(text.split())
    return text[0].upper() + text[1:]


def _gsm_symbolic_question(item: dict[str, Any]) -> str:
    text = item["question"]
    if text.endswith(_GSM_SYMBOLIC_SUFFIX):
        text = text[: -len(_GSM_SYMBOLIC_SUFFIX)]
    return " ".join(text.split())


SPECS: dict[str, ProceduralSpec] = {
    "arithmetic": ProceduralSpec(
        dataset="basic_arithmetic",
        config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"),
                    allow_parentheses=False, allow_negation=False, format_style="natural"),
        exemplars="arithmetic",
        key=lambda item: item["metadata"]["expression"],
        accept=lambda item: max(_operands(item)) <= 99,
    ),
    "chain_sum": ProceduralSpec(
        dataset="chain_sum",
        config=dict(min_terms=3, max_terms=4, min_digits=1, max_digits=2),
        exemplars="chain_sum",
        key=lambda item: item["metadata"]["expression"],
    ),
    "leg_counting": ProceduralSpec(
        dataset="leg_counting",
        config=dict(min_animals=2, max_animals=4, min_instances=1, max_instances=5),
        exemplars="leg_counting",
        key=_leg_question,
        question=_leg_question,
    ),
    "gsm_symbolic": ProceduralSpec(
        dataset="gsm_symbolic",
        config={},
        exemplars="gsm8k",
        key=_gsm_symbolic_question,
        question=_gsm_symbolic_question,
    ),
}


def reasoning_gym_seed(name: str, seed: int) -> int:
    """The seed handed to reasoning-gym: a 62-bit hash of (task, seed). reasoning-gym draws item i from
    Random(seed + i), so seeds s and s + 1 would give the same items shifted by one; hashed seeds are unrelated."""
    return loading.stable_hash(f"lsi/{name}/{seed}") >> 2


def split_of(name: str, key: str) -> str:
    """The split a problem belongs to, for every seed: a stable hash of (task, key) against SPLIT_SHARES."""
    bucket = loading.stable_hash(f"{name}\x00{key}") % _HASH_BUCKETS
    bounds = itertools.accumulate(round(share * _HASH_BUCKETS) for share in SPLIT_SHARES.values())
    return next((split for split, bound in zip(SPLIT_SHARES, bounds) if bucket < bound), "pool")


def _create(spec: ProceduralSpec, config: dict[str, Any], seed: int, size: int):
    import reasoning_gym  # noqa: PLC0415  (1.5 s to import; only procedural tasks need it)

    return reasoning_gym.create_dataset(spec.dataset, **{**config, "seed": seed, "size": size})


_UNIVERSES: dict[tuple, dict[str, tuple[Example, ...]]] = {}  # a few recent universes: the splits of a task share one
_UNIVERSES_KEPT = 8


def universe(name: str, seed: int, config: dict[str, Any] | None = None,
             exclude_questions: frozenset[str] = frozenset(),
             universe_size: int = DEFAULT_UNIVERSE_SIZE) -> dict[str, tuple[Example, ...]]:
    """Every problem of the universe (see the module docstring), by split, each split in its hand-out order."""
    if universe_size <= 0:
        raise ValueError(f"{name}: universe_size must be positive, got {universe_size}.")
    spec = SPECS[name]
    config = {**spec.config, **(config or {})}
    cache_key = (name, seed, repr(sorted(config.items())), exclude_questions, universe_size)
    if cache_key in _UNIVERSES:
        return _UNIVERSES[cache_key]
    rg_seed = reasoning_gym_seed(name, seed)
    max_draws = DRAWS_PER_PROBLEM * universe_size
    dataset = _create(spec, config, rg_seed, max_draws)
    seen: set[str] = set()
    drawn: dict[str, list[tuple[int, Example]]] = {split: [] for split in SPLITS}
    for index in range(max_draws):
        if len(seen) == universe_size:
            break
        item = dataset[index]
        if not spec.accept(item):
            continue
        key = spec.key(item)
        question = spec.question(item)
        if key in seen or key in exclude_questions or question in exclude_questions:
            continue
        seen.add(key)
        split = split_of(name, key)
        drawn[split].append((loading.stable_hash(f"lsi/{name}/{seed}/order\x00{key}"), Example(
            id=f"{name}-{split}-s{seed}-{index:06d}",
            question=question,
            answer=loading.canonical_gold(item["answer"], "number", f"reasoning-gym {spec.dataset}", index),
            metadata={"source": f"reasoning_gym.{spec.dataset} seed={rg_seed} index={index}", "key": key},
        )))
    result = {split: tuple(e for _, e in sorted(rows, key=lambda row: row[0])) for split, rows in drawn.items()}
    while len(_UNIVERSES) >= _UNIVERSES_KEPT:
        del _UNIVERSES[next(iter(_UNIVERSES))]
    _UNIVERSES[cache_key] = result
    return result


def generate(name: str, split: str, seed: int, size: int, config: dict[str, Any] | None = None,
             exclude_questions: frozenset[str] = frozenset(),
             universe_size: int = DEFAULT_UNIVERSE_SIZE) -> list[Example]:
    """The first `size` problems of `split` ("pool", "dev" or "eval") of the universe of (task, seed, config,
    universe_size), none whose key or question is in `exclude_questions`; see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if size < 0:
        raise ValueError(f"{name}: {split} size must be non-negative, got {size}.")
    problems = universe(name, seed, config, exclude_questions, universe_size)
    if len(problems[split]) < size:
        found = sum(len(p) for p in problems.values())
        space = ("" if found == universe_size else
                 f" (the problem space of config {({**SPECS[name].config, **(config or {})})} gave only {found} "
                 f"distinct problems in {DRAWS_PER_PROBLEM * universe_size} draws)")
        raise ValueError(
            f"{name}: the {split} share ({SPLIT_SHARES[split]:.0%}) of the {found}-problem universe of seed {seed} "
            f"holds {len(problems[split])} problems, fewer than the {size} asked for{space}; ask for fewer, or "
            f"pass a larger universe_size (now {universe_size}; it changes every split).")
    return list(problems[split][:size])


def _assert_disjoint(splits: dict[str, list[Example]], name: str) -> None:
    """No problem (key or question) in two splits; the hash split guarantees it, this guards the code."""
    identities: dict[str, Callable[[Example], str]] = {"key": lambda e: e.metadata["key"],
                                                       "question": lambda e: e.question}
    for (a, first), (b, second) in itertools.combinations(splits.items(), 2):
        for what, identity in identities.items():
            overlap = {identity(e) for e in first} & {identity(e) for e in second}
            if overlap:
                raise AssertionError(f"Task {name}: {len(overlap)} {what}(s) in both {a} and {b}, e.g. "
                                     f"{next(iter(overlap))[:120]!r}.")


def procedural_factory(name: str):
    spec = SPECS[name]

    def factory(data_dir=None, seed: int = 0, pool_size: int | None = None, eval_size: int | None = None,
                dev_size: int | None = None, config: dict[str, Any] | None = None,
                universe_size: int | None = None) -> Task:
        del data_dir  # generated, not read
        sizes = {"pool": DEFAULT_POOL_SIZE if pool_size is None else pool_size,
                 "dev": DEFAULT_DEV_SIZE if dev_size is None else dev_size,
                 "eval": DEFAULT_EVAL_SIZE if eval_size is None else eval_size}
        universe_size = DEFAULT_UNIVERSE_SIZE if universe_size is None else universe_size
        exemplars = loading.load_exemplars(spec.exemplars)
        # An exemplar's problem is in no split: its question text, and for the expression-keyed tasks its
        # expression ("47 - 15"), whatever the wording.
        exclude = frozenset(e.question for e in exemplars.exemplars) | frozenset(
            m for e in exemplars.exemplars for m in _EXPRESSION.findall(e.question))
        generated = {
            split: loading.memoize_loader(
                lambda split=split: generate(name, split, seed, sizes[split], config, exclude, universe_size),
                f"{name} {split}")
            for split in SPLITS}

        def checked(split: str, against: tuple[str, ...]) -> Callable[[], list[Example]]:
            def load() -> list[Example]:
                examples = generated[split]()
                _assert_disjoint({split: examples, **{other: generated[other]() for other in against}}, name)
                return examples

            return load

        task = loading.make_task(
            name, "number", generated["pool"], checked("eval", ("pool", "dev")), {"default": exemplars}, seed=seed,
            description=f"reasoning-gym {spec.dataset} ({ {**spec.config, **(config or {})} }), seed {seed}: "
                        f"{sizes['pool']} pool / {sizes['dev']} dev / {sizes['eval']} eval problems, each split a "
                        f"hash-ordered sample of one {universe_size}-problem universe.",
        )
        return dataclasses.replace(task, load_dev=checked("dev", ("pool",)))

    factory.__name__ = name
    return factory
