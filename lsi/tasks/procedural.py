"""Procedural tasks from reasoning-gym: arithmetic (the default small-model task), gsm_symbolic, chain_sum and
leg_counting.

How the splits are drawn (both deterministic; ids are stable across runs and across pool/eval sizes):
- The pool and the eval split come from different reasoning-gym seeds, each a 62-bit hash of (task, split, `seed`)
  (`reasoning_gym_seed`). reasoning-gym draws item i from `Random(rg_seed + i)`, so plain seeds s and s + 1 would
  give the same items shifted by one; hashed seeds make every (task, split, seed) an unrelated stream.
- A small problem space means two independent streams still repeat problems (two-term 1-2 digit +/- has about 20k
  distinct expressions). So the space itself is split: a problem (its KEY, see below) whose stable hash falls in the
  eval bucket (EVAL_FRACTION = 20% of the space) may only appear in eval, any other only in the pool. Items of the
  wrong side, repeats of a key within a split, and problems equal to a default exemplar's question are skipped,
  and drawing goes on (index by index) until the split has its size. No problem is therefore in both splits, and the
  eval split does not depend on the pool size. The key is the expression for arithmetic and chain_sum (so "What is
  3 + 4?" and "Compute 3 + 4." are one problem) and the question text otherwise.
- Ids: "{task}-{split}-s{seed}-{index}", index = the reasoning-gym item index.

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
Default sizes: pool 2,000, eval 500 (`pool_size`, `eval_size`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from lsi.tasks import loading
from lsi.tasks.base import Example, Task

EVAL_FRACTION = 0.2
DEFAULT_POOL_SIZE = 2000
DEFAULT_EVAL_SIZE = 500
MAX_DRAWS_PER_ITEM = 50  # give up (with an error) when the space seems too small for the requested size
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


def reasoning_gym_seed(name: str, split: str, seed: int) -> int:
    """The seed handed to reasoning-gym: a 62-bit hash of (task, split, seed). reasoning-gym draws item i from
    Random(seed + i), so seeds s and s + 1 would give the same items shifted by one; hashed seeds are unrelated."""
    return loading.stable_hash(f"lsi/{name}/{split}/{seed}") >> 2


def _create(spec: ProceduralSpec, config: dict[str, Any], seed: int, size: int):
    import reasoning_gym  # noqa: PLC0415  (1.5 s to import; only procedural tasks need it)

    return reasoning_gym.create_dataset(spec.dataset, **{**config, "seed": seed, "size": size})


def generate(name: str, split: str, seed: int, size: int, config: dict[str, Any] | None = None,
             exclude_questions: frozenset[str] = frozenset()) -> list[Example]:
    """`size` distinct problems of `split` ("pool" or "eval"), none whose key or question is in `exclude_questions`;
    see the module docstring."""
    if split not in ("pool", "eval"):
        raise ValueError(f"split must be 'pool' or 'eval', got {split!r}.")
    if size < 0:
        raise ValueError(f"{name}: {split} size must be non-negative, got {size}.")
    spec = SPECS[name]
    config = {**spec.config, **(config or {})}
    rg_seed = reasoning_gym_seed(name, split, seed)
    max_draws = MAX_DRAWS_PER_ITEM * size + 1000
    dataset = _create(spec, config, rg_seed, max_draws)
    want_eval = split == "eval"
    examples: list[Example] = []
    seen: set[str] = set()
    for index in range(max_draws):
        if len(examples) == size:
            break
        item = dataset[index]
        if not spec.accept(item):
            continue
        key = spec.key(item)
        question = spec.question(item)
        if key in seen or key in exclude_questions or question in exclude_questions:
            continue
        if loading.in_eval_bucket(key, EVAL_FRACTION, name) != want_eval:
            continue
        seen.add(key)
        examples.append(Example(
            id=f"{name}-{split}-s{seed}-{index:06d}",
            question=question,
            answer=loading.canonical_gold(item["answer"], "number", f"reasoning-gym {spec.dataset}", index),
            metadata={"source": f"reasoning_gym.{spec.dataset} seed={rg_seed} index={index}", "key": key},
        ))
    if len(examples) < size:
        raise ValueError(
            f"{name}: found only {len(examples)} distinct {split} problems in {max_draws} draws, fewer than the "
            f"{size} asked for; the problem space of config {config} is too small (lower the size or widen it).")
    return examples


def procedural_factory(name: str):
    spec = SPECS[name]

    def factory(data_dir=None, seed: int = 0, pool_size: int | None = None, eval_size: int | None = None,
                config: dict[str, Any] | None = None) -> Task:
        del data_dir  # generated, not read
        pool_size = DEFAULT_POOL_SIZE if pool_size is None else pool_size
        eval_size = DEFAULT_EVAL_SIZE if eval_size is None else eval_size
        exemplars = loading.load_exemplars(spec.exemplars)
        # An exemplar's problem is in neither split: its question text, and for the expression-keyed tasks its
        # expression ("47 - 15"), whatever the wording.
        exclude = frozenset(e.question for e in exemplars.exemplars) | frozenset(
            m for e in exemplars.exemplars for m in _EXPRESSION.findall(e.question))

        pool = loading.memoize_loader(lambda: generate(name, "pool", seed, pool_size, config, exclude),
                                      f"{name} pool")
        evaluation = loading.memoize_loader(lambda: generate(name, "eval", seed, eval_size, config, exclude),
                                            f"{name} eval")

        def load_eval() -> list[Example]:
            examples = evaluation()
            loading.assert_disjoint(pool(), examples, name)
            loading.assert_disjoint(pool(), examples, name, key=lambda e: e.metadata["key"])
            return examples

        return loading.make_task(
            name, "number", pool, load_eval, {"default": exemplars}, seed=seed,
            description=f"reasoning-gym {spec.dataset} ({ {**spec.config, **(config or {})} }), seed {seed}: "
                        f"{pool_size} pool / {eval_size} eval distinct problems from different seeds.",
        )

    factory.__name__ = name
    return factory
