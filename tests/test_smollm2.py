"""The real SmolLM2-135M-Instruct (the packaged Q4_1 GGUF) against transformers' loading of the same file:
logits on varied prompts batched with padding, and 32-token greedy continuations token for token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lsi.models import Transformer, init_decode_cache, padded_positions
from lsi.vocab import load_vocabulary

NEW_TOKENS = 32
PROMPTS = {
    "few_shot_cot": (
        "Q: Tom has 4 apples and buys 3 more. Then he gives 1 apple to his sister. How many apples does he have?\n"
        "A: Tom starts with 4 apples. After buying 3 more he has 4 + 3 = 7. He gives 1 away, so 7 - 1 = 6. "
        "The answer is 6.\n\n"
        "Q: A shelf holds 12 books. Maria takes 5 books and puts back 2. How many books are on the shelf?\n"
        "A:"
    ),
    "chat": (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "code": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "prose": "The printing press changed Europe in the fifteenth century because",
    "numbers": "2, 4, 8, 16, 32, 64,",
}
NAMES = sorted(PROMPTS)


@pytest.fixture(scope="module")
def prompts():
    """name -> token ids (our vocabulary: the GGUF's own tokenizer)."""
    vocab = load_vocabulary("smollm2-135m-instruct")
    return {name: vocab.encode(PROMPTS[name]) for name in NAMES}


@pytest.fixture(scope="module")
def ours(smollm2, prompts):
    """Our model on all prompts in one right-padded batch, then a greedy loop of jitted cached decode steps.

    name -> (prompt logits [len, vocab], greedy tokens [NEW_TOKENS], the logits that chose them [NEW_TOKENS, vocab]).
    """
    cfg, params = smollm2
    model = Transformer(cfg)
    params = jax.tree.map(jnp.asarray, params)
    lengths = np.array([len(prompts[name]) for name in NAMES])
    width = int(lengths.max())
    tokens = np.zeros((len(NAMES), width), np.int32)  # [batch, width]
    mask = np.zeros((len(NAMES), width), bool)
    for i, name in enumerate(NAMES):
        tokens[i, :lengths[i]] = prompts[name]
        mask[i, :lengths[i]] = True
    segment_ids = jnp.asarray(mask, jnp.int32)

    prefill = jax.jit(lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg, return_kv=True))
    step = jax.jit(lambda p, t, pos, c: model.apply({"params": p}, t, pos, c, method=Transformer.decode))
    logits, (k, v) = prefill(params, jnp.asarray(tokens), padded_positions(segment_ids), segment_ids)
    logits = np.asarray(logits)  # [batch, width, vocab]
    cache = init_decode_cache(k, v, jnp.asarray(mask), num_samples=1, max_new=NEW_TOKENS)
    step_logits = [logits[np.arange(len(NAMES)), lengths - 1]]  # [batch, vocab] predicting each new token
    generated = [step_logits[-1].argmax(-1)]  # [batch] per step
    for t in range(NEW_TOKENS - 1):
        out, cache = step(params, jnp.asarray(generated[-1], jnp.int32)[:, None],
                          jnp.asarray(lengths + t, jnp.int32)[:, None], cache)
        step_logits.append(np.asarray(out[:, 0]))
        generated.append(step_logits[-1].argmax(-1))
    generated = np.stack(generated, 1)  # [batch, NEW_TOKENS]
    step_logits = np.stack(step_logits, 1)  # [batch, NEW_TOKENS, vocab]
    return {name: (logits[i, :lengths[i]], generated[i], step_logits[i]) for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def reference(smollm2_reference, prompts):
    """transformers on each prompt alone: greedy new tokens from `generate`, and the logits of one forward over the
    prompt and those tokens ([prompt + new, vocab]: the prompt's, then those that chose each new token)."""
    model = smollm2_reference
    eos = model.generation_config.eos_token_id
    results = {}
    with torch.no_grad():
        for name in NAMES:
            ids = torch.tensor([prompts[name]], dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, pad_token_id=eos if isinstance(eos, int) else eos[0])
            logits = model(input_ids=out).logits[0].float().numpy()
            results[name] = (logits, out[0, ids.shape[1]:].numpy())
    return results


def test_prompts_are_varied(prompts):
    lengths = [len(prompts[name]) for name in NAMES]
    assert len(set(lengths)) == len(lengths) and min(lengths) >= 8  # padding differs in every row


@pytest.mark.parametrize("name", NAMES)
def test_prompt_logits_match_transformers(name, ours, reference):
    prompt_logits = ours[name][0]
    diff = float(np.abs(prompt_logits - reference[name][0][:len(prompt_logits)]).max())
    print(f"{name}: prompt logits (batched, padded) max |ours - transformers| over {len(prompt_logits)} positions "
          f"= {diff:.2e}")
    assert diff <= 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_decode_step_logits_match_transformers(name, ours, reference):
    """Logits of our cached decode steps against transformers' full forward over the same continuation."""
    prompt_len = len(ours[name][0])
    generated, step_logits = ours[name][1], ours[name][2]
    expected = reference[name][1]
    mismatch = np.flatnonzero(generated[:len(expected)] != expected)
    agree = int(mismatch[0]) + 1 if mismatch.size else len(expected)  # inputs are equal up to the first difference
    diff = float(np.abs(step_logits[:agree] - reference[name][0][prompt_len - 1:prompt_len - 1 + agree]).max())
    print(f"{name}: decode-step logits max |ours - transformers| over {agree} steps = {diff:.2e}")
    assert diff <= 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_greedy_continuation_matches_transformers_generate(name, ours, reference, smollm2_reference):
    _, generated, step_logits = ours[name]
    expected = reference[name][1]
    eos = smollm2_reference.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    assert len(expected) == NEW_TOKENS or expected[-1] in eos  # generate stops early only at end-of-sequence
    mismatch = np.flatnonzero(generated[:len(expected)] != expected)
    if mismatch.size:  # a genuine near-tie shows as two close top logits on both sides
        t = int(mismatch[0])
        theirs = reference[name][0][len(ours[name][0]) - 1 + t]

        def top2(logits):
            return [(int(i), round(float(logits[i]), 5)) for i in np.argsort(logits)[-2:][::-1]]

        pytest.fail(f"{name}: new token {t} differs (ours {generated[t]}, transformers {expected[t]}); top-2 logits: "
                    f"ours {top2(step_logits[t])}, transformers {top2(theirs)}")
