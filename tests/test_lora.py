"""LoRA through the trainer's Parameterization seam: the merge, frozen base weights, resume, merged export, gin."""

from __future__ import annotations

import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsi.main
from lsi.checkpoints import load_checkpoint
from lsi.models import Transformer, get_config, init_params
from lsi.partitioning import make_mesh
from lsi.training.data import PackedBatches
from lsi.training.lora import LoraConfig, LoraParams, init_adapters, merge
from lsi.training.optimizers import OptimizerConfig
from lsi.training.trainer import (
    TrainConfig,
    export_hf,
    initial_state,
    make_train_step,
    parameterization,
    train,
)

CFG = get_config("tiny")
BATCH, LENGTH, EOS = 8, 32, 2
OPT = OptimizerConfig(name="adamw", learning_rate=1e-2)
LORA = LoraConfig(rank=4, alpha=8.0, targets=("query", "value", "out", "down"))


@functools.lru_cache(maxsize=1)
def _params():
    return jax.tree.map(np.asarray, init_params(CFG, jax.random.PRNGKey(0)))


def _data(seed: int = 0) -> PackedBatches:
    rng = np.random.default_rng(seed)
    examples = [(rng.integers(3, CFG.vocab_size, rng.integers(1, 16)), rng.integers(3, CFG.vocab_size, 6))
                for _ in range(40)]
    return PackedBatches(examples, batch_size=BATCH, seq_length=LENGTH, seed=0, eos_id=EOS)


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": BATCH, "seq_length": LENGTH, "mesh": (2, 2, 2),
                          "checkpoint_every": 3, "log_every": 3, "optimizer": OPT, "progress_bar": False, "lora": LORA,
                          **kw})


def _logits(params, tokens):
    return np.asarray(Transformer(CFG).apply({"params": params}, jnp.asarray(tokens)))


def test_merge_adds_the_scaled_low_rank_product_to_each_target():
    params = _params()
    adapters = init_adapters(params, LORA, seed=0)
    rng = np.random.default_rng(1)
    adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), adapters)  # B != 0
    merged = merge(params, adapters, LORA)
    out, down = adapters["attention"]["out"], adapters["mlp"]["down"]
    # out: [layers, heads, head_dim | embed], two input dimensions; down: [layers, mlp | embed].
    np.testing.assert_allclose(merged["layers"]["attention"]["out"], params["layers"]["attention"]["out"]
                               + LORA.scale * np.einsum("lhkr,lre->lhke", out["a"], out["b"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(merged["layers"]["mlp"]["down"], params["layers"]["mlp"]["down"]
                               + LORA.scale * np.einsum("lfr,lre->lfe", down["a"], down["b"]), rtol=1e-5, atol=1e-5)
    for name in ("key", "gate", "up"):  # not targeted: untouched
        group = "attention" if name == "key" else "mlp"
        assert merged["layers"][group][name] is params["layers"][group][name]
    assert merged["embedding"] is params["embedding"]


def test_untrained_adapters_are_the_base_model():
    """B starts at zero: the adapted model's logits, and its first training loss, are the base model's."""
    params = _params()
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 12))
    np.testing.assert_array_equal(_logits(merge(params, init_adapters(params, LORA, 0), LORA), tokens),
                                  _logits(params, tokens))
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    first_losses = []
    for layout in (parameterization(_config()), parameterization(_config(lora=None))):
        step = make_train_step(CFG, OPT, 1, mesh, (BATCH, LENGTH), params_layout=layout)
        _, metrics = step(initial_state(params, OPT, step.shardings, layout), next(_data()))
        first_losses.append(float(metrics["loss"]))
    assert first_losses[0] == pytest.approx(first_losses[1], rel=1e-6)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    state, summary = train(_config(), CFG, _params(), _data(), root / "run")
    return root, state, summary


def test_only_the_adapters_train(lora_run):
    _, state, summary = lora_run
    assert summary.history[-1]["loss"] < summary.history[0]["loss"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.params["model"], _params())
    for group, kernels in state.params["lora"].items():
        for name, ab in kernels.items():
            assert np.abs(np.asarray(ab["b"])).max() > 0, (group, name)  # B left zero
            fresh = init_adapters(_params(), LORA, 0)[group][name]["a"]
            assert not np.array_equal(np.asarray(ab["a"]), fresh), (group, name)
    # Optimizer state is kept for the adapters only: Adam's two moments of each A and B (and scalar step counts).
    moments = sorted(x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert moments == sorted(2 * [x.shape for x in jax.tree.leaves(state.params["lora"])])


def test_lora_resume_is_exact(lora_run, tmp_path):
    _, full, _ = lora_run
    train(_config(steps=3), CFG, _params(), _data(), tmp_path / "run")
    resumed, summary = train(_config(), CFG, "unused: resuming", _data(), tmp_path / "run")
    assert summary.restored_from == 3
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), resumed.params["lora"],
                 full.params["lora"])


def test_merged_export_is_the_adapted_model(lora_run, tmp_path):
    _, state, _ = lora_run
    layout = LoraParams(LORA)
    directory = export_hf(CFG, layout.model_params(state.params), tmp_path / "hf")
    cfg, exported = load_checkpoint(directory)
    assert cfg.num_layers == CFG.num_layers
    tokens = np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 16))
    adapted = _logits(layout.model_params(jax.tree.map(np.asarray, state.params)), tokens)
    np.testing.assert_allclose(_logits(exported, tokens), adapted, rtol=1e-5, atol=1e-5)
    assert np.abs(adapted - _logits(_params(), tokens)).max() > 1e-3  # the adapters did move the model
    base = _params()["layers"]
    np.testing.assert_array_equal(exported["layers"]["attention"]["key"], base["attention"]["key"])
    assert not np.array_equal(exported["layers"]["attention"]["query"], base["attention"]["query"])


def test_gin_turns_lora_on_and_rejects_unknown_targets():
    gin.clear_config()
    try:
        gin.parse_config(["lsi.TrainConfig.lora = @lsi.LoraConfig()", "lsi.LoraConfig.rank = 2",
                          "lsi.LoraConfig.targets = ('query', 'up')"])
        config = gin.get_configurable("lsi.TrainConfig")()
    finally:
        gin.clear_config()
    assert config.lora == LoraConfig(rank=2, targets=("query", "up"))
    assert dataclasses.asdict(config)["lora"]["rank"] == 2  # recorded in the train stage's manifest and lineage
    with pytest.raises(ValueError, match="LoraConfig.targets must name some of"):
        LoraConfig(targets=("q_proj",))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoraConfig(rank=0)


def test_the_plan_sizes_optimizer_state_for_the_adapters_only():
    full = lsi.main.Experiment(run_dir="unused", model="smollm2_135m")
    lora = dataclasses.replace(full, train=dataclasses.replace(full.train, lora=LoraConfig()))
    full_plan, lora_plan = (lsi.main.abstract_plan(e, num_devices=8) for e in (full, lora))
    assert lora_plan["param_bytes_per_device"] > full_plan["param_bytes_per_device"]  # base + adapters
    assert 0 < lora_plan["optimizer_bytes_per_device"] < full_plan["optimizer_bytes_per_device"] / 50
