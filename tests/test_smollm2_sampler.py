"""Greedy sampling of the real SmolLM2-135M-Instruct equals transformers' `generate(do_sample=False)`."""

import jax
import numpy as np
import pytest
import torch

from lsi.batch_decoding import BatchSampler, SampleRequest
from lsi.decoding import TransformerLM
from lsi.sampling_methods import Greedy
from lsi.vocab import load_vocabulary

PROMPTS = [
    "Q: There are 15 trees in the grove. Grove workers will plant trees today. After they are done, there will be "
    "21 trees. How many trees did the workers plant today?\nA:",
    "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\nA:",
    "Q: What is 12 + 35?\nA: Let's think step by step.",
    "Q: What is 81 - 17?\nA:",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWrite a haiku about autumn.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 7 times 8?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village,",
    "Premise:\n\"A man is playing a guitar on stage.\"\nBased on this premise, can we conclude the hypothesis "
    "\"A man is performing music.\" is true?\nOPTIONS:\n- yes\n- no\n- it is not possible to tell\nA:",
    "Q: Which is a source of light? (a) the moon (b) the sun (c) a mirror (d) a rock\nA:",
    "Photosynthesis is the process by which",
    "1, 2, 3, 5, 8, 13,",
    "Translate to French: The cat sleeps on the sofa.\n",
    "Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left?\nA:",
    "import numpy as np\n\nx = np.arange(10)\n",
    "The three primary colors are",
    "Q: Is the sky green? Answer yes or no.\nA:",
    "Water boils at",
    "Dear hiring manager,\n\nI am writing to",
]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def ours(smollm2):
    cfg, params = smollm2
    vocab = load_vocabulary("smollm2-135m-instruct")
    sampler = BatchSampler(TransformerLM(cfg), jax.device_put(params), vocab, cfg.max_length, num_samples=1,
                           max_new_tokens=NEW_TOKENS, method=Greedy(), batch_size=10, progress=False)
    requests = [SampleRequest(str(i), prompt) for i, prompt in enumerate(PROMPTS)]
    return vocab, {int(c.example_id): c for c in sampler.run(requests)}


def test_greedy_equals_transformers_generate(ours, smollm2_reference):
    vocab, completions = ours
    assert len(PROMPTS) == 20
    mismatches = []
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([vocab.encode(prompt)])
        with torch.no_grad():
            generated = smollm2_reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                   max_new_tokens=NEW_TOKENS, eos_token_id=vocab.eos_id,
                                                   pad_token_id=vocab.eos_id)
        theirs = generated[0, ids.shape[1]:].tolist()
        mine = completions[i].token_ids[0]
        if mine != theirs:
            first = next(k for k in range(min(len(mine), len(theirs))) if mine[k] != theirs[k])
            context = torch.tensor([vocab.encode(prompt) + theirs[:first]])
            with torch.no_grad():
                logits = smollm2_reference(context).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            mismatches.append((i, first, float(top2[0] - top2[1])))
    # Exact equality is expected; a divergence is only acceptable at a genuine near-tie of the top-2 logits.
    for prompt_index, position, gap in mismatches:
        assert gap < 1e-3, f"prompt {prompt_index} diverges at token {position} with a top-2 logit gap of {gap}"
    assert len(mismatches) <= 2, mismatches


def test_finish_reasons_follow_eos(ours):
    vocab, completions = ours
    for completion in completions.values():
        ids, reason = completion.token_ids[0], completion.finish_reasons[0]
        if reason == "eos":
            assert ids[-1] == vocab.eos_id and vocab.eos_id not in ids[:-1]
        else:
            assert reason == "max_length" and len(ids) == NEW_TOKENS and vocab.eos_id not in ids
    assert np.mean([len(c.texts[0]) > 0 for c in completions.values()]) > 0.8
