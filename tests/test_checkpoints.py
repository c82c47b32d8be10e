"""Checkpoint import and export against `transformers`, the reference implementation.

Tiny random models are made locally (no download): HF directories of Llama (tied, untied, llama3 RoPE scaling,
head_dim != hidden / heads) and Qwen2 (qkv biases), sharded and bfloat16 checkpoints, GGUF files we write ourselves
in every block type the `gguf` package can quantize, and the error messages of broken checkpoints.
"""

import functools
import json
import shutil

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lsi.checkpoints import CheckpointError, load_checkpoint, load_config, save_hf_directory
from lsi.models import Transformer, padded_positions

ATOL = 1e-4  # float32: both sides compute the same arithmetic in a different order
VOCAB, HIDDEN, MLP, LAYERS, MAX_LEN = 128, 64, 128, 2, 64
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}

# name -> (architecture, config overrides). Every model but "llama_mha_tied" has grouped (or multi-) query attention.
HF_MODELS = {
    "llama_mha_tied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama_gqa_untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3_rope_scaling": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                                          rope_scaling=LLAMA3_ROPE, rope_theta=10000.0)),
    "llama_wide_heads": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                       tie_word_embeddings=True)),
    "qwen2_gqa_tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2_gqa_untied": ("qwen2", dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)),
}

# Rows of one batch: (real length, padding side). Positions reach 39, beyond llama3's original 16.
WIDTH = 40
ROWS = [(40, "right"), (23, "right"), (31, "left"), (12, "left")]


def _hf_model(arch: str, seed: int = 0, **overrides):
    """A random float32 transformers model whose weights are O(1) (HF's own init gives near-zero logits)."""
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                        max_position_embeddings=MAX_LEN, rms_norm_eps=1e-5, **overrides)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


@functools.lru_cache(maxsize=None)
def _forward(cfg):
    model = Transformer(cfg)
    return jax.jit(lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg))


def _padded_batch(seed: int = 0):
    """tokens, segment_ids: int32 [rows, WIDTH] with right- and left-padded rows (padding token 0)."""
    rng = np.random.RandomState(seed)
    tokens = np.zeros((len(ROWS), WIDTH), np.int32)
    segment_ids = np.zeros((len(ROWS), WIDTH), np.int32)
    for i, (n, side) in enumerate(ROWS):
        sl = slice(0, n) if side == "right" else slice(WIDTH - n, WIDTH)
        tokens[i, sl] = rng.randint(1, VOCAB, size=n)
        segment_ids[i, sl] = 1
    return tokens, segment_ids


def _our_logits(cfg, params, tokens, segment_ids):
    segment_ids = jnp.asarray(segment_ids)
    return np.asarray(_forward(cfg)(params, jnp.asarray(tokens), padded_positions(segment_ids), segment_ids))


def _reference_logits(model, tokens, segment_ids):
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                    attention_mask=torch.from_numpy(segment_ids.astype(np.int64)),
                    position_ids=torch.from_numpy(positions.astype(np.int64)))
    return out.logits.float().numpy()


def _max_diff_on_real_tokens(cfg, params, reference_model, seed: int = 0) -> float:
    tokens, segment_ids = _padded_batch(seed)
    ours = _our_logits(cfg, params, tokens, segment_ids)
    reference = _reference_logits(reference_model, tokens, segment_ids)
    real = segment_ids.astype(bool)
    assert np.all(np.isfinite(ours[real]))
    assert np.abs(reference[real]).max() > 1.0  # logits are not trivially small
    return float(np.abs(ours[real] - reference[real]).max())


def _save(model, directory, **kwargs):
    model.save_pretrained(str(directory), **kwargs)
    return directory


def _load_reference(directory, **kwargs):
    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, **kwargs).eval()


def _flat(tree):
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# ------------------------------------------------------------------------------------------------ HF directories


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_hf_directory_logits_match_transformers(name, tmp_path):
    arch, overrides = HF_MODELS[name]
    model = _hf_model(arch, **overrides)
    cfg, params = load_checkpoint(_save(model, tmp_path / name))
    assert cfg.tie_embeddings == overrides["tie_word_embeddings"]
    assert cfg.qkv_bias == (arch == "qwen2")
    assert (cfg.rope_scaling is not None) == ("rope_scaling" in overrides)
    diff = _max_diff_on_real_tokens(cfg, params, model)
    print(f"{name}: max |ours - transformers| = {diff:.2e}")
    assert diff <= ATOL


def test_sharded_checkpoint_loads_like_one_file(tmp_path):
    model = _hf_model("llama", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    one = _save(model, tmp_path / "one")
    sharded = _save(model, tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    cfg, params = load_checkpoint(sharded)
    cfg_one, params_one = load_checkpoint(one)
    assert cfg == cfg_one
    flat, flat_one = _flat(params), _flat(params_one)
    assert flat.keys() == flat_one.keys()
    for key in flat:
        np.testing.assert_array_equal(flat[key], flat_one[key], err_msg=key)
    diff = _max_diff_on_real_tokens(cfg, params, _load_reference(sharded))
    print(f"sharded: max diff {diff:.2e}")
    assert diff <= ATOL


def test_bfloat16_checkpoint(tmp_path):
    model = _hf_model("qwen2", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    directory = _save(model.to(torch.bfloat16), tmp_path / "bf16")
    header_len = int.from_bytes((directory / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((directory / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {e["dtype"] for k, e in header.items() if k != "__metadata__"} == {"BF16"}
    cfg, params = load_checkpoint(directory)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    # transformers upcasts the same bfloat16 weights to float32 exactly, so float32 rounding is the only difference.
    reference = _load_reference(directory)
    np.testing.assert_array_equal(params["embedding"], reference.model.embed_tokens.weight.detach().numpy())
    diff = _max_diff_on_real_tokens(cfg, params, reference)
    print(f"bfloat16: max diff {diff:.2e}")
    assert diff <= ATOL  # tighter than bfloat16 rounding: both sides hold the same (upcast) weights


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("name", ["llama3_rope_scaling", "llama_wide_heads", "qwen2_gqa_untied"])
def test_export_round_trip(name, tmp_path):
    arch, overrides = HF_MODELS[name]
    original = _hf_model(arch, seed=1, **overrides)
    cfg, params = load_checkpoint(_save(original, tmp_path / "original"))
    exported = save_hf_directory(cfg, jax.tree.map(jnp.asarray, params), tmp_path / "exported")
    assert not list(exported.glob("*.tmp"))
    reference = _load_reference(exported)
    assert type(reference).__name__ == type(original).__name__
    # transformers sees exactly the original weights ...
    original_state = original.state_dict()
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), original_state[key].numpy(), err_msg=key)
    # ... and computes our logits from them.
    diff = _max_diff_on_real_tokens(cfg, params, reference)
    print(f"export {name}: max diff {diff:.2e}")
    assert diff <= ATOL
    cfg_again, params_again = load_checkpoint(exported)
    assert cfg_again == cfg
    flat, flat_again = _flat(params), _flat(params_again)
    assert flat.keys() == flat_again.keys()
    for key in flat:
        np.testing.assert_array_equal(flat_again[key], flat[key], err_msg=key)


# ------------------------------------------------------------------------------------------------ GGUF

Q = gguf.GGMLQuantizationType
_GGUF_GLOBALS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute`: HF's rotate-half rows -> interleaved rotary pairs."""
    return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GGUF_GLOBALS:
        return _GGUF_GLOBALS[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER[rest]}"


def _write_gguf(path, model, qtype, arch=None, embedding_qtype=None, skip=(), omit_keys=()):
    """A GGUF file of `model` the way llama.cpp's converter writes it: metadata under `{arch}.`, q/k rows permuted
    for llama, 1-D tensors in F32 and matrices in `qtype` (the token embedding in `embedding_qtype` if given)."""
    config = model.config
    arch = arch or config.model_type
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads  # Qwen2's config has no head_dim
    writer = gguf.GGUFWriter(str(path), arch=arch)
    metadata = {
        "block_count": (writer.add_block_count, config.num_hidden_layers),
        "context_length": (writer.add_context_length, config.max_position_embeddings),
        "embedding_length": (writer.add_embedding_length, config.hidden_size),
        "feed_forward_length": (writer.add_feed_forward_length, config.intermediate_size),
        "attention.head_count": (writer.add_head_count, heads),
        "attention.head_count_kv": (writer.add_head_count_kv, kv_heads),
        "rope.dimension_count": (writer.add_rope_dimension_count, head_dim),
        "rope.freq_base": (writer.add_rope_freq_base, float(config.rope_parameters["rope_theta"])),
        "attention.layer_norm_rms_epsilon": (writer.add_layer_norm_rms_eps, config.rms_norm_eps),
        "vocab_size": (writer.add_vocab_size, config.vocab_size),
    }
    for key, (add, value) in metadata.items():
        if key not in omit_keys:
            add(value)
    writer.add_file_type(int(qtype))
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = _gguf_name(hf_name)
        if name in skip:
            continue
        array = np.ascontiguousarray(tensor.detach().numpy(), np.float32)
        if arch == "llama" and ".attn_q." in name:
            array = _llama_cpp_permute(array, heads)
        elif arch == "llama" and ".attn_k." in name:
            array = _llama_cpp_permute(array, kv_heads)
        tensor_qtype = embedding_qtype if (embedding_qtype and name == "token_embd.weight") else qtype
        if array.ndim == 1 or tensor_qtype == Q.F32:
            writer.add_tensor(name, array)
        elif tensor_qtype == Q.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, tensor_qtype), raw_dtype=tensor_qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


_GGUF_LLAMA = dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)

# (architecture, config overrides, matrix block type, token-embedding block type)
GGUF_CASES = {
    **{f"llama_{q.name}": ("llama", _GGUF_LLAMA, q, None)
       for q in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)},
    # SmolLM2's packaged file: tied, Q8_0 token embedding, Q4_1 matrices.
    "llama_tied_mixed": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
                         Q.Q4_1, Q.Q8_0),
    "qwen2_Q8_0": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False), Q.Q8_0,
                   None),
}


def test_load_config_is_load_checkpoints_config_without_the_weights(tmp_path):
    model = _hf_model("llama", **_GGUF_LLAMA)
    directory = _save(model, tmp_path / "hf")
    gguf_path = _write_gguf(tmp_path / "model.gguf", model, Q.F32)
    for path in (directory, directory / "config.json", gguf_path):
        assert load_config(path) == load_checkpoint(path)[0]
    with pytest.raises(CheckpointError, match="no config.json"):
        load_config(tmp_path)


@pytest.mark.parametrize("name", sorted(GGUF_CASES))
def test_gguf_logits_match_transformers_gguf_loading(name, tmp_path):
    arch, overrides, qtype, embedding_qtype = GGUF_CASES[name]
    model = _hf_model(arch, seed=2, **overrides)
    path = _write_gguf(tmp_path / f"{name}.gguf", model, qtype, embedding_qtype=embedding_qtype)
    reader = gguf.GGUFReader(str(path))
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 2} == {qtype, embedding_qtype or qtype}
    cfg, params = load_checkpoint(path)
    assert cfg.qkv_bias == (arch == "qwen2") and cfg.tie_embeddings == overrides["tie_word_embeddings"]
    reference = _load_reference(tmp_path, gguf_file=path.name)
    if qtype == Q.F32:  # lossless: our un-permuted q/k equal the original HF weights exactly
        ours = _flat(params)
        original = model.state_dict()
        np.testing.assert_array_equal(ours["['layers']['attention']['query']"][0],
                                      original["model.layers.0.self_attn.q_proj.weight"].numpy()
                                      .reshape(4, 16, HIDDEN).transpose(2, 0, 1))
        np.testing.assert_array_equal(ours["['layers']['attention']['key']"][1],
                                      original["model.layers.1.self_attn.k_proj.weight"].numpy()
                                      .reshape(2, 16, HIDDEN).transpose(2, 0, 1))
    diff = _max_diff_on_real_tokens(cfg, params, reference)
    print(f"gguf {name}: max diff {diff:.2e}")
    assert diff <= ATOL


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def good_directory(tmp_path_factory):
    """A valid single-file Llama checkpoint; tests copy it before breaking it."""
    directory = tmp_path_factory.mktemp("good")
    return _save(_hf_model("llama", **_GGUF_LLAMA), directory)


def _copy(directory, tmp_path):
    return shutil.copytree(directory, tmp_path / "ckpt")


def _rewrite_tensors(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _assert_names(error, *parts):
    message = str(error.value)
    for part in parts:
        assert str(part) in message, f"{part!r} not named in: {message}"


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError) as error:
        load_checkpoint(missing)
    _assert_names(error, missing)


def test_unsupported_architecture_in_config(good_directory, tmp_path):
    directory = _copy(good_directory, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    _assert_names(error, directory / "config.json", "GPT2LMHeadModel")


def test_config_missing_key(good_directory, tmp_path):
    directory = _copy(good_directory, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    del config["intermediate_size"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    _assert_names(error, directory / "config.json", "intermediate_size")


def test_tensor_shape_mismatch(good_directory, tmp_path):
    directory = _copy(good_directory, tmp_path)
    name = "model.layers.1.self_attn.q_proj.weight"

    def shrink(tensors):
        tensors[name] = np.ascontiguousarray(tensors[name][:32])

    _rewrite_tensors(directory, shrink)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    _assert_names(error, directory, name, "(32, 64)", "(64, 64)")


def test_missing_tensor(good_directory, tmp_path):
    directory = _copy(good_directory, tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite_tensors(directory, lambda tensors: tensors.pop(name))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    _assert_names(error, directory, name)


def test_truncated_safetensors(good_directory, tmp_path):
    directory = _copy(good_directory, tmp_path)
    path = directory / "model.safetensors"
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    header.pop("__metadata__", None)
    last = max(header, key=lambda k: header[k]["data_offsets"][1])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    _assert_names(error, path, last, "truncated")


def test_safetensors_index_naming_missing_shard(tmp_path):
    model = _hf_model("llama", **_GGUF_LLAMA)
    directory = _save(model, tmp_path / "sharded", max_shard_size="40KB")
    shard = sorted(directory.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    _assert_names(error, directory / "model.safetensors.index.json", shard)


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory):
    return _write_gguf(tmp_path_factory.mktemp("gguf") / "good.gguf", _hf_model("llama", **_GGUF_LLAMA), Q.Q8_0)


def test_truncated_gguf(good_gguf, tmp_path):
    path = tmp_path / "truncated.gguf"
    path.write_bytes(good_gguf.read_bytes()[:-100])
    last = max(gguf.GGUFReader(str(good_gguf)).tensors, key=lambda t: t.data_offset).name
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    _assert_names(error, path, last, "truncated")


def test_unsupported_gguf_architecture(tmp_path):
    model = _hf_model("llama", **_GGUF_LLAMA)
    path = _write_gguf(tmp_path / "gpt2.gguf", model, Q.F16, arch="gpt2")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    _assert_names(error, path, "'gpt2'")


def test_gguf_missing_metadata_key(tmp_path):
    model = _hf_model("llama", **_GGUF_LLAMA)
    path = _write_gguf(tmp_path / "no-blocks.gguf", model, Q.F16, omit_keys=("block_count",))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    _assert_names(error, path, "llama.block_count")


def test_gguf_missing_tensor(tmp_path):
    model = _hf_model("llama", **_GGUF_LLAMA)
    path = _write_gguf(tmp_path / "no-up.gguf", model, Q.F16, skip=("blk.1.ffn_up.weight",))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    _assert_names(error, path, "blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight")


def test_gguf_shape_mismatch(tmp_path):
    """A GGUF whose metadata disagrees with its tensors (feed_forward_length edited)."""
    model = _hf_model("llama", **_GGUF_LLAMA)
    model.config.intermediate_size = 2 * MLP  # the file's metadata now claims a wider MLP than its tensors hold
    path = _write_gguf(tmp_path / "wrong-ffn.gguf", model, Q.F16)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    _assert_names(error, path, "model.layers.0.mlp.gate_proj.weight", f"({MLP}, {HIDDEN})", f"({2 * MLP}, {HIDDEN})")
