"""The Transformer: parameter counts, incremental decoding == full forward, padding independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsi.models import Transformer, abstract_params, get_config, init_decode_cache, init_params, padded_positions
from lsi.models.configs import RopeScaling
from lsi.models.transformer import decode_layerwise, layerwise_cache, split_layers

CONFIGS = {
    "gqa": get_config("tiny"),
    "mha_untied_bias": get_config("tiny", num_kv_heads=8, tie_embeddings=False, qkv_bias=True),
    "palm": get_config("tiny_palm"),
    "llama3_rope": get_config("tiny", rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32)),
    "geglu_scaled": get_config("tiny", activation="gelu", embed_scale=8.0),
    "blocked_attention": get_config("tiny", attention_block=4),
}


@pytest.mark.parametrize("name, published", [("palm_8b", 8.63e9), ("palm_62b", 62.50e9), ("palm_540b", 540.35e9)])
def test_palm_parameter_counts_match_published(name, published):
    cfg = get_config(name)
    count = sum(x.size for x in jax.tree.leaves(abstract_params(cfg)))
    assert abs(count - published) / published < 0.01
    assert count == cfg.num_params


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_num_params_property_counts_init(name):
    cfg = CONFIGS[name]
    params = abstract_params(cfg)
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params


def _forward(cfg):
    """A jitted full forward; tests call it a few times so eager dispatch would dominate their time."""
    model = Transformer(cfg)
    return jax.jit(lambda p, *args: model.apply({"params": p}, *args))


def _decode_step(cfg):
    model = Transformer(cfg)
    return jax.jit(lambda p, t, pos, c: model.apply({"params": p}, t, pos, c, method=Transformer.decode))


def _random_tokens(shape, vocab, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(1, vocab, size=shape), jnp.int32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_then_decode_equals_full_forward(name):
    cfg = CONFIGS[name]
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.PRNGKey(1))
    tokens = _random_tokens((3, 14), cfg.vocab_size)
    full = _forward(cfg)(params, tokens)
    prompt_len = 6
    _, (k, v) = model.apply({"params": params}, tokens[:, :prompt_len], return_kv=True)
    cache = init_decode_cache(k, v, jnp.ones((3, prompt_len), bool), num_samples=1, max_new=8)
    step = _decode_step(cfg)
    stepped = []
    for t in range(prompt_len, 14):
        logits, cache = step(params, tokens[:, t:t + 1], jnp.full((3, 1), t, jnp.int32), cache)
        stepped.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(stepped, 1), full[:, prompt_len:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gqa", "palm", "blocked_attention"])
def test_rows_behind_a_shared_context_equal_the_full_sequence(name):
    """A context (the shared few-shot prompt) prefilled once and attended to by every row of a padded batch."""
    cfg = CONFIGS[name]
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.PRNGKey(7))
    context = _random_tokens((5,), cfg.vocab_size, seed=1)
    suffixes = _random_tokens((2, 7), cfg.vocab_size, seed=2)
    full = _forward(cfg)(params, jnp.concatenate([jnp.broadcast_to(context, (2, 5)), suffixes], axis=1))
    _, (k, v) = model.apply({"params": params}, context[None], return_kv=True)
    segments = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], jnp.int32)  # the second row is right-padded
    behind = model.apply({"params": params}, suffixes, None, segments, context=(k[:, 0], v[:, 0]))
    np.testing.assert_allclose(behind[0], full[0, 5:], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(behind[1, :4], full[1, 5:9], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_rows_equal_rows_alone(side):
    cfg = CONFIGS["gqa"]
    forward = _forward(cfg)
    params = init_params(cfg, jax.random.PRNGKey(2))
    lengths = [9, 4, 12]
    width = 12
    rows = [_random_tokens((1, n), cfg.vocab_size, seed=n) for n in lengths]
    tokens = np.zeros((3, width), np.int32)
    segment_ids = np.zeros((3, width), np.int32)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        tokens[i, sl] = row[0]
        segment_ids[i, sl] = 1
    positions = padded_positions(jnp.asarray(segment_ids))
    batched = forward(params, jnp.asarray(tokens), positions, jnp.asarray(segment_ids))
    for i, (row, n) in enumerate(zip(rows, lengths)):
        alone = forward(params, row)[0]
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        np.testing.assert_allclose(batched[i, sl], alone, atol=1e-5, rtol=1e-5)


def test_decode_after_padded_prefix_matches_alone():
    """Right-padded prompts of different lengths, then decoding with per-row positions."""
    cfg = CONFIGS["gqa"]
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.PRNGKey(3))
    lengths, width, new = [3, 7], 8, 4
    full_rows = [_random_tokens((1, n + new), cfg.vocab_size, seed=10 + n) for n in lengths]
    tokens = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), bool)
    for i, n in enumerate(lengths):
        tokens[i, :n] = full_rows[i][0, :n]
        mask[i, :n] = True
    _, (k, v) = model.apply({"params": params}, jnp.asarray(tokens), padded_positions(jnp.asarray(mask)),
                            jnp.asarray(mask, jnp.int32), return_kv=True)
    cache = init_decode_cache(k, v, jnp.asarray(mask), num_samples=1, max_new=new)
    alone = [model.apply({"params": params}, row)[0] for row in full_rows]
    step = _decode_step(cfg)
    for t in range(new):
        step_tokens = jnp.asarray([[row[0, n + t]] for row, n in zip(full_rows, lengths)], jnp.int32)
        step_positions = jnp.asarray([[n + t] for n in lengths], jnp.int32)
        logits, cache = step(params, step_tokens, step_positions, cache)
        for i, n in enumerate(lengths):
            np.testing.assert_allclose(logits[i, 0], alone[i][n + t], atol=1e-5, rtol=1e-5)


def test_samples_share_prefix_and_diverge():
    """Several samples of one prompt: each equals decoding that continuation alone."""
    cfg = CONFIGS["palm"]
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.PRNGKey(4))
    prompt = _random_tokens((1, 5), cfg.vocab_size, seed=5)
    continuations = _random_tokens((3, 3), cfg.vocab_size, seed=6)  # 3 samples x 3 tokens
    _, (k, v) = model.apply({"params": params}, prompt, return_kv=True)
    cache = init_decode_cache(k, v, jnp.ones((1, 5), bool), num_samples=3, max_new=3)
    # Causal attention: position 5 + t of the whole sequence sees exactly the prompt and tokens 0..t.
    alone = _forward(cfg)(params, jnp.concatenate([jnp.repeat(prompt, 3, axis=0), continuations], axis=1))
    step = _decode_step(cfg)
    for t in range(3):
        logits, cache = step(params, continuations[None, :, t], jnp.full((1, 3), 5 + t), cache)
        np.testing.assert_allclose(logits[0], alone[:, 5 + t], atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layerwise_decode_equals_scanned_decode(name):
    """The samplers' unrolled decode: the same logits and cache as the scanned `Transformer.decode`, step by step."""
    cfg = CONFIGS[name]
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.PRNGKey(8))
    prompt = _random_tokens((2, 6), cfg.vocab_size, seed=9)
    mask = jnp.asarray([[True] * 6, [True] * 4 + [False] * 2])
    _, (k, v) = model.apply({"params": params}, prompt, padded_positions(mask), mask.astype(jnp.int32),
                            return_kv=True)
    scanned = init_decode_cache(k, v, mask, num_samples=3, max_new=4)
    layerwise = layerwise_cache(scanned)
    layer_params = split_layers(params["layers"])
    assert len(layer_params) == cfg.num_layers
    step = _decode_step(cfg)
    step_layerwise = jax.jit(lambda p, lp, t, pos, c: decode_layerwise(cfg, p, lp, t, pos, c))
    for t in range(4):
        tokens = _random_tokens((2, 3), cfg.vocab_size, seed=20 + t)
        positions = jnp.asarray([[6 + t] * 3, [4 + t] * 3], jnp.int32)
        expected, scanned = step(params, tokens, positions, scanned)
        logits, layerwise = step_layerwise(params, layer_params, tokens, positions, layerwise)
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.stack(layerwise.k), scanned.k, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.stack(layerwise.v), scanned.v, atol=1e-5, rtol=1e-5)
    assert int(layerwise.index) == int(scanned.index) == 4

def test_bfloat16_compute_is_close_to_float32():
    cfg = CONFIGS["gqa"]
    params = init_params(cfg, jax.random.PRNGKey(5))
    tokens = _random_tokens((2, 10), cfg.vocab_size)
    f32 = _forward(cfg)(params, tokens)
    bf16 = _forward(cfg.replace(dtype=jnp.bfloat16))(params, tokens)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, atol=0.1)


def test_remat_does_not_change_gradients():
    cfg = CONFIGS["gqa"]
    params = init_params(cfg, jax.random.PRNGKey(6))
    tokens = _random_tokens((2, 10), cfg.vocab_size)

    def loss(p, c):
        return Transformer(c).apply({"params": p}, tokens).mean()

    plain = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg)
    remat = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg.replace(remat="full"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain, remat)


def test_config_validation_errors():
    with pytest.raises(ValueError, match="num_kv_heads"):
        get_config("tiny", num_heads=8, num_kv_heads=3)
    with pytest.raises(KeyError, match="Unknown model config"):
        get_config("gpt-5")
