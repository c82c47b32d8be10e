"""The batch driver: text in, completions out; bucketing, stop strings, bad prompts, equality with the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsi.batch_decoding import (
    BatchSampler,
    SampleRequest,
    cut_at_stop,
    example_seed_id,
    stop_token_sequences,
)
from lsi.decoding import SamplerSpec, TransformerLM, make_sampler
from lsi.sampling_methods import Greedy, Temperature
from lsi.models import get_config, init_params
from lsi.vocab import load_vocabulary


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def model():
    """A tiny random model over the real 49152-token vocabulary, so text goes through the real tokenizer."""
    cfg = get_config("tiny", vocab_size=49152, max_length=128)
    return cfg, init_params(cfg, jax.random.PRNGKey(0))


QUESTIONS = [f"Q: What is {a} + {b}?\nA:" for a, b in [(1, 2), (13, 4), (7, 70), (25, 25), (3, 9), (40, 2)]]


def _sampler(model, vocab, **kwargs):
    cfg, params = model
    defaults = dict(num_samples=3, max_new_tokens=6, method=Temperature(0.8, top_k=20), batch_size=4,
                    progress=False)
    defaults.update(kwargs)
    return BatchSampler(TransformerLM(cfg), params, vocab, cfg.max_length, **defaults)


def test_driver_matches_the_sampler_and_is_order_independent(model, vocab):
    cfg, params = model
    requests = [SampleRequest(f"q{i}", text) for i, text in enumerate(QUESTIONS)]
    sampler = _sampler(model, vocab, eos_ids=())
    forward = {c.example_id: c for c in sampler.run(requests)}
    backward = {c.example_id: c for c in _sampler(model, vocab, eos_ids=(), batch_size=3).run(requests[::-1])}
    assert set(forward) == {r.example_id for r in requests}
    for key in forward:
        assert forward[key].token_ids == backward[key].token_ids
        assert forward[key].texts == [vocab.decode(ids) for ids in forward[key].token_ids]
    # The same prompt through the jitted sampler directly gives the same tokens.
    ids = vocab.encode(QUESTIONS[1])
    tokens = np.zeros((1, 16), np.int32)
    tokens[0, : len(ids)] = ids
    direct = make_sampler(TransformerLM(cfg), sampler.spec)(
        params, jnp.asarray(tokens), jnp.asarray([len(ids)]), jnp.asarray([example_seed_id("q1")]), 0)
    assert [list(map(int, row)) for row in np.asarray(direct.tokens[0])] == forward["q1"].token_ids
    assert sampler.stats["prompts"] == 6 and sampler.stats["sampled_tokens"] == 6 * 3 * 6
    assert sampler.stats["padding_rows"] == 2  # 6 prompts in batches of 4


def test_stop_strings_cut_text_and_set_the_finish_reason(vocab):
    assert cut_at_stop("7 + 2 = 9. The answer is 9.\n\nQ: next", ["\n\nQ:"]) == ("7 + 2 = 9. The answer is 9.", True)
    assert cut_at_stop("no stop here", ["\n\nQ:"]) == ("no stop here", False)
    sequences = stop_token_sequences(vocab, ["\n\nQ:"])
    assert tuple(vocab.encode("\n\nQ:")) in sequences
    # Every listed spelling decodes back to the stop string.
    assert all(vocab.decode(list(seq)) == "\n\nQ:" for seq in sequences)


def test_driver_stops_on_a_string_the_model_emits(model, vocab):
    """Use text that a seeded run produces anyway as a stop string: the driver must cut exactly before it."""
    settings = dict(num_samples=1, method=Temperature(1.0), eos_ids=(), max_new_tokens=8)
    free = next(iter(_sampler(model, vocab, **settings).run([SampleRequest("a", QUESTIONS[0])])))
    ids = free.token_ids[0]
    stop = vocab.decode(ids[3:5])
    assert tuple(vocab.encode(stop)) == tuple(ids[3:5]), "pick a seed whose tokens re-encode identically"
    stopped = next(iter(_sampler(model, vocab, stop_strings=[stop], **settings).run(
        [SampleRequest("a", QUESTIONS[0])])))
    full_text = vocab.decode(ids)
    assert stopped.texts[0] == full_text[: full_text.find(stop)]
    assert stopped.finish_reasons[0] == "stop"
    assert len(stopped.token_ids[0]) <= 5  # the device stopped early too, not only the host-side cut


def test_bad_prompts_name_the_example(model, vocab):
    sampler = _sampler(model, vocab)
    with pytest.raises(ValueError, match="'empty'.*empty"):
        list(sampler.run([SampleRequest("empty", "")]))
    with pytest.raises(ValueError, match="'long'.*exceeds the model's max length 128"):
        list(sampler.run([SampleRequest("long", "word " * 200)]))
    with pytest.raises(ValueError, match="'dup' appears twice"):
        list(sampler.run([SampleRequest("dup", "a"), SampleRequest("dup", "b")]))
    with pytest.raises(ValueError, match="num_samples"):
        _sampler(model, vocab, num_samples=0)


def test_sampler_spec_is_hashable_for_compilation_caching():
    spec = SamplerSpec(4, 8, Temperature(0.7, 40), (2,), ((1, 2),))
    assert hash(spec) == hash(SamplerSpec(4, 8, Temperature(0.7, 40), (2,), ((1, 2),)))


def test_shared_prefix_prefill_equals_full_prefill(model, vocab):
    """Few-shot prompts share their exemplars; prefilling them once per batch changes nothing but float rounding."""
    cfg, _ = model
    exemplars = "".join(f"Q: What is {a} + {b}?\nA: {a} + {b} = {a + b}. The answer is {a + b}.\n\n"
                        for a, b in [(2, 3), (10, 4), (6, 6)])
    requests = [SampleRequest(f"q{i}", exemplars + text) for i, text in enumerate(QUESTIONS)]
    greedy = dict(method=Greedy(), num_samples=1, max_new_tokens=8, eos_ids=())
    full = {c.example_id: c for c in _sampler(model, vocab, shared_prefix_block=0, **greedy).run(requests)}
    shared_sampler = _sampler(model, vocab, shared_prefix_block=8, **greedy)
    shared = {c.example_id: c for c in shared_sampler.run(requests)}
    common = len(vocab.encode(exemplars))
    assert shared_sampler.stats["shared_prefix_tokens"] >= 2 * (common - 8)  # two batches, each shares the exemplars
    for key in full:
        assert shared[key].token_ids == full[key].token_ids
        assert shared[key].prompt_tokens == full[key].prompt_tokens
        np.testing.assert_allclose(shared[key].sum_log_probs, full[key].sum_log_probs, atol=1e-4)
    # Sampling: the same random streams, so the same tokens.
    sampled_full = {c.example_id: c for c in _sampler(model, vocab, shared_prefix_block=0).run(requests)}
    sampled_shared = {c.example_id: c for c in _sampler(model, vocab, shared_prefix_block=8).run(requests)}
    assert all(sampled_full[k].token_ids == sampled_shared[k].token_ids for k in sampled_full)
