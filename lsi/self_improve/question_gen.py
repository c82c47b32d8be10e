"""Self-generated questions and self-generated CoT exemplars (PAPER.md section 4).

Questions: prompt the model with k seed questions in random order ("Q: q1\\nQ: q2\\n...\\nQ:"; in chat style one
user turn that lists them and asks for one more of the kind), sample the next line as a new question, normalise,
de-duplicate against the seeds and each other, and keep only questions whose self-consistency vote share reaches a
threshold. The kept questions are written as a pool JSONL file ({"id", "question"}) that the generic `jsonl` task
reads, so they flow through the normal pipeline.

Exemplars: greedy zero-shot "Let's think step by step." rationales on pool questions become exemplar files
(`templates` files of `shots` exemplars each, as the paper's 20 x 4), which a task can rotate over.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import re
import time
from typing import Any, Sequence

from lsi.batch_decoding import BatchSampler, LoadedModel, SampleRequest
from lsi.io_utils import as_path, read_jsonl, write_json_atomic, write_jsonl_atomic
from lsi.sampling_methods import Greedy, SamplingMethod, Temperature
from lsi.self_improve.manifest import file_output, stage_manifest, write_manifest
from lsi.self_improve.sampling import load_pool
from lsi.self_improve.voting import vote_answers
from lsi.tasks.answers import display_answer, parse_answer
from lsi.tasks.base import Exemplar, ExemplarSet, Task
from lsi.tasks.loading import stable_hash
from lsi.tasks.prompt_style import PLAIN, Prompter
from lsi.tasks.prompting import PromptFormat

_ANSWER_SENTENCE = re.compile(r"(?:so\s+)?the\s+answer\s+is\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class QuestionGenConfig:
    num_seed_questions: int = 10  # the paper's GSM8K setting
    questions_per_prompt: int = 10  # seeds shown per prompt, shuffled
    num_prompts: int = 64
    samples_per_prompt: int = 4
    method: SamplingMethod = Temperature(1.0, top_k=40)  # writes questions; gin: @questions/lsi.Temperature()
    max_question_tokens: int = 96
    min_question_chars: int = 15
    # The self-consistency filter (not stated in the paper; these are our defaults).
    filter_samples: int = 8
    filter_method: SamplingMethod = Temperature(0.7, top_k=40)  # gin: @questions_filter/lsi.Temperature()
    filter_max_new_tokens: int = 256
    min_vote_share: float = 0.5
    batch_size: int = 8
    seed: int = 0


def normalize_question(text: str) -> str:
    """One line, collapsed whitespace, no leading 'Q:'."""
    text = text.strip().split("\n", 1)[0]
    text = re.sub(r"^\s*Q:\s*", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _dedupe_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def generation_prompts(seeds: Sequence[str], config: QuestionGenConfig, prompter: Prompter = Prompter()
                       ) -> list[str]:
    """`num_prompts` prompts of shuffled seed questions: plain text ends with 'Q:' for the model to continue; a chat
    prompt lists them in a user turn that asks for one new question."""
    rng = random.Random(config.seed)
    prompts = []
    for _ in range(config.num_prompts):
        shown = rng.sample(list(seeds), min(config.questions_per_prompt, len(seeds)))
        listed = "".join(f"Q: {q}\n" for q in shown)
        if prompter.style == PLAIN:
            prompts.append(listed + "Q:")
        else:
            prompts.append(prompter.request(f"{listed}\nWrite one new question of the same kind. Reply with the "
                                            "question only, on one line."))
    return prompts


def generate_questions(task: Task, model: LoadedModel, config: QuestionGenConfig, output_dir: str | os.PathLike, *,
                       progress: bool = True, prompter: Prompter | None = None) -> dict[str, Any]:
    """Writes generated_pool.jsonl (kept questions) and manifest.json (counts at each filter) under output_dir.
    `prompter` writes both the generation and the filter's prompts (default: the vocabulary's own style)."""
    start = time.perf_counter()
    prompter = prompter or Prompter.for_vocabulary(model.vocab)
    output_dir = as_path(output_dir)
    pool = load_pool(task)
    seeds = [q.question for q in random.Random(config.seed).sample(pool, min(config.num_seed_questions, len(pool)))]
    generator = BatchSampler.for_model(model, num_samples=config.samples_per_prompt,
                                       max_new_tokens=config.max_question_tokens, method=config.method,
                                       stop_strings=("\n",), eos_ids=prompter.eos_ids, batch_size=config.batch_size,
                                       seed=config.seed, progress=progress)
    requests = [SampleRequest(f"genprompt-{i}", p) for i, p in enumerate(generation_prompts(seeds, config, prompter))]
    raw = [text for c in generator.run(requests, total=len(requests)) for text in c.texts]
    seen = {_dedupe_key(s) for s in seeds}
    candidates, counts = [], {"generated": len(raw), "too_short": 0, "duplicate": 0}
    for text in raw:
        question = normalize_question(text)
        key = _dedupe_key(question)
        if len(question) < config.min_question_chars:
            counts["too_short"] += 1
        elif key in seen:
            counts["duplicate"] += 1
        else:
            seen.add(key)
            candidates.append(question)
    counts["candidates"] = len(candidates)
    exemplars = task.exemplars_for(pool[0])
    checker = BatchSampler.for_model(model, num_samples=config.filter_samples,
                                     max_new_tokens=config.filter_max_new_tokens, method=config.filter_method,
                                     stop_strings=prompter.stop_strings(exemplars), eos_ids=prompter.eos_ids,
                                     batch_size=config.batch_size, seed=config.seed + 1, progress=progress)
    cot_requests = [SampleRequest(f"gen-{i:06d}", prompter.prompt(PromptFormat.FEW_SHOT_COT, q, exemplars))
                    for i, q in enumerate(candidates)]
    kept = []
    for completion in checker.run(cot_requests, total=len(cot_requests)):
        vote = vote_answers([parse_answer(t, task.answer_type) for t in completion.texts], task.answer_type)
        if vote.answer is not None and vote.share_of_all >= config.min_vote_share:
            index = int(completion.example_id.split("-")[1])
            kept.append({"id": completion.example_id, "question": candidates[index],
                         "vote_share": vote.share_of_all})
    kept.sort(key=lambda r: r["id"])
    counts["kept"] = len(kept)
    path = write_jsonl_atomic(output_dir / "generated_pool.jsonl",
                              [{"id": r["id"], "question": r["question"]} for r in kept])
    return write_manifest(output_dir, stage_manifest(
        "generate_questions", {**dataclasses.asdict(config), **prompter.describe()},
        inputs={"task": task.name, "seed_questions": seeds}, outputs={path.name: file_output(path, records=len(kept))},
        counts=counts, seconds=time.perf_counter() - start))


@dataclasses.dataclass(frozen=True)
class PromptGenConfig:
    """The paper's zero-shot setting: 20 generated templates of 4 exemplars each, from greedy Step-by-Step."""

    templates: int = 20  # exemplar sets; each question is prompted with one, by a hash of its id
    shots: int = 4  # exemplars per set
    max_new_tokens: int = 256  # of each greedy zero-shot rationale
    batch_size: int = 8
    seed: int = 0  # which pool questions are asked, in which order


def split_rationale(text: str) -> str:
    """The reasoning before the first answer sentence (the exemplar writes its own 'The answer is X.')."""
    match = _ANSWER_SENTENCE.search(text)
    body = text[: match.start()] if match else text
    return re.sub(r"\s+", " ", body).strip()


def generate_exemplars(task: Task, model: LoadedModel, config: PromptGenConfig, output_dir: str | os.PathLike, *,
                       progress: bool = True, prompter: Prompter | None = None) -> list[pathlib.Path]:
    """Writes `templates` exemplar files (generated_00.json, ...) from greedy zero-shot CoT on pool questions, asked
    in `prompter`'s style (default: the vocabulary's own).

    Questions whose rationale yields no parseable answer or no reasoning are skipped; the manifest counts them.
    """
    start = time.perf_counter()
    output_dir = as_path(output_dir)
    prompter = prompter or Prompter.for_vocabulary(model.vocab)
    needed = config.templates * config.shots
    pool = load_pool(task)
    order = list(range(len(pool)))
    random.Random(config.seed).shuffle(order)
    sampler = BatchSampler.for_model(model, num_samples=1, max_new_tokens=config.max_new_tokens, method=Greedy(),
                                     stop_strings=prompter.stop_strings(), eos_ids=prompter.eos_ids,
                                     batch_size=config.batch_size, progress=progress)
    exemplars: list[Exemplar] = []
    skipped = 0
    # Ask for a margin of extra questions, since some rationales have no usable answer.
    candidates = [pool[i] for i in order[: min(len(pool), 2 * needed)]]
    requests = [SampleRequest(q.id, prompter.prompt(PromptFormat.ZERO_SHOT_COT, q.question)) for q in candidates]
    by_id = {q.id: q for q in candidates}
    for completion in sampler.run(requests, total=len(requests)):
        text = completion.texts[0]
        answer = parse_answer(text, task.answer_type)
        rationale = split_rationale(text)
        if answer is None or not rationale:
            skipped += 1
            continue
        exemplars.append(Exemplar(by_id[completion.example_id].question, rationale,
                                  display_answer(answer, task.answer_type)))
    exemplars.sort(key=lambda e: e.question)
    random.Random(config.seed + 1).shuffle(exemplars)
    if len(exemplars) < needed:
        raise ValueError(f"Task {task.name}: only {len(exemplars)} usable zero-shot rationales for "
                         f"{config.templates} x {config.shots} exemplars ({skipped} skipped); use fewer templates.")
    paths = []
    for t in range(config.templates):
        chosen = exemplars[t * config.shots: (t + 1) * config.shots]
        record = {"name": f"{task.name}_generated_{t:02d}",
                  "description": "Self-generated by greedy zero-shot 'Let's think step by step.' (PAPER.md sec. 4).",
                  "answer_type": task.answer_type,
                  "exemplars": [dataclasses.asdict(e) for e in chosen]}
        paths.append(write_json_atomic(output_dir / f"generated_{t:02d}.json", record))
    write_manifest(output_dir, stage_manifest(
        "generate_exemplars", {**dataclasses.asdict(config), **prompter.describe()}, inputs={"task": task.name},
        outputs={p.name: file_output(p, exemplars=config.shots) for p in paths},
        counts={"questions_tried": len(requests), "skipped": skipped, "usable": len(exemplars),
                "templates": config.templates}, seconds=time.perf_counter() - start))
    return paths


def rotating_task(task: Task, exemplar_files: Sequence[str | os.PathLike]) -> Task:
    """The task prompted with generated exemplar sets, each question assigned one by a stable hash of its id, so
    the sampler still shares one prompt cache across a question's samples."""
    sets = {f"generated_{i:02d}": ExemplarSet.from_file(p) for i, p in enumerate(exemplar_files)}
    names = sorted(sets)

    def choose(example: Any) -> str:
        return names[stable_hash(example.id) % len(names)]

    rotated = task.with_exemplars(sets)
    rotated.choose_exemplars = choose
    return rotated


def read_generated_pool(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [record for _, record in read_jsonl(path)]
