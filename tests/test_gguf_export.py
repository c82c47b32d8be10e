"""benchmarks.gguf_export: the F32 copy llama.cpp runs holds exactly the float32 values lsi loads from the packaged
Q4_1 file, under the same metadata and tokenizer; the F16 kind rounds matrices only (on a small synthetic file)."""

import gguf
import jax
import numpy as np
import pytest

from benchmarks import gguf_export
from lsi.checkpoints import load_checkpoint, resolve_model_path
from lsi.vocab import load_vocabulary

SENTENCE = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. 🙂"


@pytest.fixture(scope="module")
def f32_copy(tmp_path_factory):
    """(reader of the packaged Q4_1 file, reader of its F32 copy, the copy's path): each file parsed once, as
    parsing a 49k-token vocabulary takes seconds."""
    original = gguf.GGUFReader(resolve_model_path("smollm2-135m-instruct"))
    path = tmp_path_factory.mktemp("gguf-export") / "smollm2.F32.gguf"
    gguf_export.write_unquantized(original, path, "f32")
    return original, gguf.GGUFReader(path), path


def _raw_fields(reader):
    """Each metadata key's type and raw bytes (key, type tags, lengths and values as stored)."""
    return {name: (field.types, b"".join(bytes(part) for part in field.parts)) for name, field in reader.fields.items()}


def test_f32_copy_holds_exactly_the_params_lsi_loads_from_the_quantized_file(f32_copy, smollm2):
    cfg, params = load_checkpoint(f32_copy[2])
    want_cfg, want_params = smollm2
    assert cfg == want_cfg
    got = dict(jax.tree_util.tree_leaves_with_path(params))
    want = dict(jax.tree_util.tree_leaves_with_path(want_params))
    assert got.keys() == want.keys()
    for path, value in want.items():
        assert got[path].dtype == np.float32 and np.array_equal(got[path], value), jax.tree_util.keystr(path)


def test_f32_copy_keeps_every_metadata_value_and_the_tokenizer(f32_copy):
    original, exported, path = f32_copy
    want, got = _raw_fields(original), _raw_fields(exported)
    assert list(got) == list(want)  # same keys, same order
    assert {k for k in want if got[k] != want[k]} == {"general.file_type"}
    assert exported.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert [(t.name, t.shape.tolist()) for t in exported.tensors] == [(t.name, t.shape.tolist())
                                                                      for t in original.tensors]
    assert {t.tensor_type for t in exported.tensors} == {gguf.GGMLQuantizationType.F32}
    vocab, copied_vocab = load_vocabulary("smollm2-135m-instruct"), load_vocabulary(path)
    ids = vocab.encode(SENTENCE)
    assert copied_vocab.encode(SENTENCE) == ids and copied_vocab.decode(ids) == vocab.decode(ids)


def _small_quantized_gguf(path):
    """A two-tensor llama-style GGUF: a Q8_0 matrix and an F32 norm, with string, array, float and bool keys."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((8, 64), dtype=np.float32)  # [rows, cols]: cols a multiple of the 32-value block
    norm = 1.0 + 0.1 * rng.standard_normal(64, dtype=np.float32)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 1)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "é"])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 3])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(matrix, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_norm.weight", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_each_kind_writes_the_dequantized_values_and_keeps_norms_f32(tmp_path, kind):
    source = tmp_path / "small.Q8_0.gguf"
    _small_quantized_gguf(source)
    copy = gguf_export.unquantized_gguf(source, kind, tmp_path / "cache")
    original, exported = gguf.GGUFReader(source), gguf.GGUFReader(copy)
    matrix_type = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16}[kind]
    assert [t.tensor_type for t in exported.tensors] == [matrix_type, gguf.GGMLQuantizationType.F32]
    for before, after in zip(original.tensors, exported.tensors):
        want = gguf_export.dequantized(before)
        if after.tensor_type == gguf.GGMLQuantizationType.F16:
            want = want.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(gguf_export.dequantized(after), want)
    want_fields, got_fields = _raw_fields(original), _raw_fields(exported)
    assert {k for k in want_fields if want_fields[k] != got_fields[k]} == {"general.file_type"}
    assert exported.fields["general.file_type"].contents() == gguf_export.EXPORT_KINDS[kind][2]


def test_copies_are_cached_under_the_source_hash_and_reused(tmp_path):
    source = tmp_path / "small.Q8_0.gguf"
    _small_quantized_gguf(source)
    copy = gguf_export.unquantized_gguf(source, "f32", tmp_path / "cache")
    written = copy.stat().st_mtime_ns
    assert copy.parent == tmp_path / "cache" / gguf_export.file_sha256(source)[:16]
    assert gguf_export.unquantized_gguf(source, "f32", tmp_path / "cache") == copy
    assert copy.stat().st_mtime_ns == written
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # no partial file left behind
