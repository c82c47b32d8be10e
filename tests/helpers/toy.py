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
