"""A toy arithmetic task and a tiny random model over the real vocabulary, shared by stage tests and subprocesses."""

from __future__ import annotations

import jax

from lsi.decoding import TransformerLM
from lsi.models import get_config, init_params
from lsi.tasks.base import PROMPTS_DIR, Example, ExemplarSet, Task
from lsi.vocab import load_vocabulary


def toy_task(num_pool: int = 12, num_eval: int = 6) -> Task:
    pool = [Example(f"p{i}", f"What is {i} + {2 * i}?", str(3 * i)) for i in range(num_pool)]
    evals = [Example(f"e{i}", f"What is {i} + {i + 5}?", str(2 * i + 5)) for i in range(num_eval)]
    return Task("toy_sums", "number", load_pool=lambda: list(pool), load_eval=lambda: list(evals),
                exemplar_sets={"default": ExemplarSet.from_file(PROMPTS_DIR / "gsm8k.json")})


def tiny_model(seed: int = 0):
    """(TransformerLM, params, vocab, max_length) of a tiny random Llama over SmolLM2's vocabulary."""
    cfg = get_config("tiny", vocab_size=49152, max_length=1024)
    return TransformerLM(cfg), init_params(cfg, jax.random.PRNGKey(seed)), load_vocabulary("smollm2-135m-instruct"), \
        cfg.max_length


def save_tiny_checkpoint(directory, seed: int = 0):
    """A tiny random Llama saved as a HF directory with SmolLM2's tokenizer: a model name lsi.main can load."""
    from lsi.checkpoints import save_hf_directory  # noqa: PLC0415

    cfg = get_config("tiny", vocab_size=49152, max_length=512)
    save_hf_directory(cfg, jax.device_get(init_params(cfg, jax.random.PRNGKey(seed))), directory)
    load_vocabulary("smollm2-135m-instruct").save(directory)
    return directory


def answering_checkpoint(directory, steps: int = 24, pool_size: int = 32, prompt_style: str = "chat"):
    """A tiny model taught, with our own format and train stages, to end few-shot arithmetic answers with
    "The answer is N." (the digits are mostly wrong) in `prompt_style` (chat: SmolLM2's template, as 'auto' picks
    for it): a stand-in for a pretrained LM in self-improvement smoke runs, where a random model would never give a
    parseable answer to vote on. Returns the HF directory."""
    import json  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    from lsi.self_improve.formats import FormatStageConfig, register_formatted_task, run_format_stage  # noqa: PLC0415
    from lsi.tasks import get_task  # noqa: PLC0415
    from lsi.tasks.prompt_style import Prompter  # noqa: PLC0415
    from lsi.training.optimizers import OptimizerConfig  # noqa: PLC0415
    from lsi.training.trainer import TrainConfig, finetune  # noqa: PLC0415

    directory = pathlib.Path(directory)
    vocab = load_vocabulary("smollm2-135m-instruct")
    save_tiny_checkpoint(directory / "random")
    task = get_task("arithmetic", pool_size=pool_size, eval_size=8, seed=1234)
    labels = [{"question_id": q.id, "question": q.question, "answer": q.answer, "vote_count": 1, "num_parsed": 1,
               "num_samples": 1, "vote_share": 1.0, "vote_share_of_parsed": 1.0, "tie": False,
               "paths": [{"sample_index": 0, "text": f" The answer is {q.answer}."}]} for q in task.load_pool()]
    (directory / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    prompter = Prompter.for_vocabulary(vocab, prompt_style)
    run_format_stage(task, directory / "labels.jsonl", directory / "formats",
                     FormatStageConfig(formats="few_shot_cot_only", num_shards=1), prompter)
    name = register_formatted_task("lsi_test_answering_model", directory / "formats", vocab)
    config = TrainConfig(steps=steps, batch_size=4, seq_length=384, checkpoint_every=steps, log_every=steps,
                         progress_bar=False, optimizer=OptimizerConfig(name="adamw", learning_rate=1e-2))
    result = finetune(config, directory / "random", name, directory / "train", vocab, stop_ids=prompter.eos_ids)
    return pathlib.Path(result["hf_directory"])


def tiny_stage_bindings(run_dir, model) -> list[str]:
    """Gin bindings that run every stage on `model` in seconds: 4 arithmetic pool questions x 3 samples, 2 train
    steps, a 3-question eval. A random model states no parseable answer, so the vote may keep nothing (labels then
    come by hand)."""
    return [
        f"lsi.Experiment.run_dir = '{run_dir}'",
        f"lsi.Experiment.model = '{model}'",
        "lsi.Experiment.task = 'arithmetic'",
        "lsi.Experiment.task_kwargs = {'pool_size': 4, 'eval_size': 3}",
        "lsi.Experiment.sample = @lsi.SampleStageConfig()",
        "lsi.SampleStageConfig.num_samples = 3",
        "lsi.SampleStageConfig.max_new_tokens = 6",
        "lsi.SampleStageConfig.num_shards = 2",
        "lsi.Experiment.vote = @lsi.VoteStageConfig()",
        "lsi.VoteStageConfig.allow_empty = True",
        "lsi.Experiment.eval = @lsi.EvalConfig()",
        "lsi.EvalConfig.modes = ('cot_greedy', 'self_consistency')",
        "lsi.EvalConfig.num_samples = 2",
        "lsi.EvalConfig.max_new_tokens = 6",
        "lsi.EvalConfig.subsample_sizes = (1, 2)",
        "lsi.Experiment.train = @lsi.TrainConfig()",
        "lsi.TrainConfig.steps = 2",
        "lsi.TrainConfig.batch_size = 2",
        "lsi.TrainConfig.seq_length = 512",
        "lsi.TrainConfig.checkpoint_every = 1",
        "lsi.TrainConfig.progress_bar = False",
    ]
