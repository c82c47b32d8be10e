"""Sampling methods: each draws from exactly the distribution its own filter defines, through the real sampler;
the fast top-k path and the whole-vocabulary filter agree; min-p keeps what its definition keeps; the refactor into
method objects left the sampler's outputs byte-identical; gin binds a method per stage."""

import dataclasses
import hashlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lsi import main as lsi_main  # noqa: F401  (registers lsi.Temperature, lsi.MinP, ... with gin)
from lsi.decoding import SamplerSpec, TransformerLM, make_sampler, temperature_sample
from lsi.models import Transformer, get_config, init_params
from lsi.sampling_methods import Greedy, MinP, Sampled, Temperature, with_temperature
from lsi.self_improve.sampling import SampleStageConfig

CFG = get_config("tiny")
DRAWING_METHODS = [Temperature(0.7), Temperature(1.2, top_k=40), Temperature(0.7, top_p=0.9),
                   Temperature(1.2, top_k=40, top_p=0.9), MinP(1.0, min_p=0.05), MinP(1.5, top_k=40, min_p=0.15)]


@pytest.fixture(scope="module")
def sharp_params():
    """The tiny random model with its final norm scaled up, so filtering matters (max prob 0.05-0.23)."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    params["final_norm"]["scale"] = params["final_norm"]["scale"] * 2.0
    return params


def _prompts(lengths, width, seed):
    rng = np.random.RandomState(seed)
    tokens = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.randint(1, CFG.vocab_size, n)
    return jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32)


@pytest.mark.parametrize("method", DRAWING_METHODS, ids=repr)
def test_sampler_draws_from_the_methods_own_filter(sharp_params, method):
    tokens, lengths = _prompts([6], 16, seed=6)
    num = 20_000
    out = temperature_sample(TransformerLM(CFG), sharp_params, tokens, lengths, jnp.asarray([0]), seed=11,
                             num_samples=num, max_new_tokens=1, method=method)
    observed = np.bincount(np.asarray(out.tokens[0, :, 0]), minlength=CFG.vocab_size)
    logits = Transformer(CFG).apply({"params": sharp_params}, tokens, logits_at=lengths - 1)[0]
    expected = np.asarray(jax.nn.softmax(method.masked_logits(logits))) * num
    assert observed[expected == 0].sum() == 0, "sampled a token the method's filter drops"
    # Chi-square over tokens with expected count >= 5; the rest pooled into one bin.
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    exp = exp.astype(np.float64) * obs.sum() / exp.astype(np.float64).sum()
    assert stats.chisquare(obs, exp).pvalue > 0.001
    assert 1 < (expected > 0).sum() < CFG.vocab_size or method == Temperature(0.7)  # the filter did something
    if method.top_k is not None:
        assert (expected > 0).sum() <= method.top_k


@pytest.mark.parametrize("method", DRAWING_METHODS, ids=repr)
def test_candidates_are_the_whole_vocabulary_filter_restricted(method):
    logits = jax.random.normal(jax.random.PRNGKey(3), (3, 2, 300)) * 3.0  # [batch, samples, vocab]
    values, ids = method.candidates(logits)
    full = np.asarray(method.masked_logits(logits))
    if ids is None:
        np.testing.assert_allclose(np.asarray(values), full, rtol=1e-6)
        return
    gathered = np.take_along_axis(full, np.asarray(ids), axis=-1)
    np.testing.assert_allclose(np.asarray(values), gathered, rtol=1e-6)
    # Every token the whole-vocabulary filter keeps is a candidate.
    assert (np.isfinite(full).sum(-1) == np.isfinite(np.asarray(values)).sum(-1)).all()


def test_min_p_keeps_tokens_at_least_min_p_times_the_most_likely():
    logits = jnp.asarray(np.log([0.5, 0.2, 0.1, 0.06, 0.04, 0.1]), jnp.float32)
    kept = np.isfinite(np.asarray(MinP(1.0, min_p=0.2).masked_logits(logits)))
    np.testing.assert_array_equal(kept, [True, True, True, False, False, True])  # p >= 0.2 * 0.5
    # Temperature first: at T = 2 the ratios are square roots, so 0.06 (ratio 0.35 > 0.2 ** 0.5 * ...) joins.
    kept_hot = np.isfinite(np.asarray(MinP(2.0, min_p=0.2).masked_logits(logits)))
    ratios = np.sqrt(np.asarray([0.5, 0.2, 0.1, 0.06, 0.04, 0.1]) / 0.5)
    np.testing.assert_array_equal(kept_hot, ratios >= 0.2)
    assert np.isfinite(np.asarray(MinP(1.0, min_p=1.0).masked_logits(logits))).sum() == 1  # argmax only


def test_greedy_and_argmax_samples_ignore_the_keys():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 50))
    keys = jax.random.split(jax.random.PRNGKey(1), 6).reshape(2, 3, 2)
    np.testing.assert_array_equal(Greedy().choose(logits, keys), np.argmax(logits, -1))


# The sampler's tokens for the tiny model (seeded prompts, 6 prompts x 4 samples x 8 tokens), recorded with the
# sampler before sampling methods became objects: the refactor changed no result.
PINNED = {"greedy": (Greedy(), 0, "a46b9521dccde4ef"), "top_k": (Temperature(0.7, top_k=40), 1, "2546f715d5ae54e2"),
          "top_p": (Temperature(1.0, top_p=0.9), 0, "e8328d110479fa85"),
          "top_k_top_p": (Temperature(0.8, 20, 0.8), 0, "0ef10cc4084a9c66")}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_sampler_outputs_are_pinned(name):
    method, argmax_samples, digest = PINNED[name]
    params = init_params(CFG, jax.random.PRNGKey(0))
    lengths = [5, 9, 16, 2, 7, 8]
    rng = np.random.RandomState(5)
    tokens = np.zeros((6, 16), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.randint(1, CFG.vocab_size, n)
    spec = SamplerSpec(num_samples=4, max_new_tokens=8, method=method, argmax_samples=argmax_samples)
    out = jax.device_get(make_sampler(TransformerLM(CFG), spec)(
        params, jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32), jnp.arange(6, dtype=jnp.int32), 3))
    assert hashlib.sha256(np.asarray(out.tokens, np.int32).tobytes()).hexdigest()[:16] == digest


def test_bad_settings_are_rejected_when_the_method_is_made():
    for bad, field in [(lambda: Temperature(0.7, top_p=1.5), "top_p"), (lambda: Temperature(0.7, top_p=0.0), "top_p"),
                       (lambda: Temperature(0.0), "temperature"), (lambda: Temperature(0.7, top_k=0), "top_k"),
                       (lambda: MinP(1.0, min_p=0.0), "min_p"), (lambda: MinP(-1.0), "temperature")]:
        with pytest.raises(ValueError, match=field):
            bad()
    with pytest.raises(ValueError, match="drawing sampling method"):
        with_temperature(Greedy(), 0.7)
    assert with_temperature(MinP(1.0, min_p=0.05), 0.3) == MinP(0.3, min_p=0.05)


def test_gin_binds_a_method_per_stage_and_records_say_which():
    gin.clear_config()
    try:
        gin.parse_config(["lsi.SampleStageConfig.method = @sample/lsi.MinP()", "sample/lsi.MinP.min_p = 0.05",
                          "sample/lsi.MinP.temperature = 0.9", "lsi.EvalConfig.method = @eval/lsi.Temperature()",
                          "eval/lsi.Temperature.temperature = 1.2"])
        sample = gin.get_configurable("lsi.SampleStageConfig")()
        evaluation = gin.get_configurable("lsi.EvalConfig")()
    finally:
        gin.clear_config()
    assert sample.method == MinP(0.9, min_p=0.05) and type(sample.method) is MinP
    assert evaluation.method == Temperature(1.2)
    assert dataclasses.asdict(sample)["method"] == {"temperature": 0.9, "top_k": None, "min_p": 0.05, "name": "min_p"}
    assert SampleStageConfig().method == Temperature(0.7, top_k=40)
    assert all(isinstance(m, Sampled) for m in DRAWING_METHODS)
