"""Tokenizers as `seqio.Vocabulary`: SentencePiece models through seqio's own class, the rest through HF `tokenizers`.

`load_vocabulary(path_or_name)` takes a packaged model name (`smollm2-135m-instruct`), a .gguf file (its embedded
tokenizer), a tokenizer.json, a SentencePiece .model file, or a Hugging Face directory, and caches the result.

Ids and seqio: seqio pads every sequence with 0 and treats 0 as padding in its feature converters, so `pad_id` is 0
whatever the model calls its own padding token. In SmolLM2 id 0 is `<|endoftext|>`, which the model never needs inside
a target; in GPT-2/Qwen2 vocabularies id 0 is "!", which seqio would then also mask out of loss weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import gguf
import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from lsi.checkpoints.gguf_file import open_gguf
from lsi.checkpoints.layout import CheckpointError
from lsi.checkpoints.registry import resolve_model_path
from lsi.io_utils import write_text_atomic

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
# Hugging Face files that name the special tokens, most specific first: the tokenizer's own config names tokens by
# their text, the model configs by id (generation_config is what `generate` stops on).
_TOKENIZER_CONFIG = "tokenizer_config.json"
_ID_CONFIGS = ("generation_config.json", "config.json")


class VocabularyError(ValueError):
    """A tokenizer file that cannot be used: the message names the file and the key."""


# The split regexes of llama.cpp's byte-level pre-tokenizers, spelled as transformers' GGUF loader spells them (the
# reference our tests compare with). None means GPT-2's regex, which `ByteLevel(use_regex=True)` applies itself.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_TOKENIZERS: dict[str, str | None] = {
    # Old files name no pre-tokenizer; transformers then applies GPT-2's regex (llama.cpp warns and uses its own).
    "default": None,
    "gpt-2": None,
    # SmolLM's own tokenizer.json (and llama.cpp's "smollm") split off every digit before GPT-2's regex
    # (`Digits(individual_digits=True)`). transformers' GGUF loader does not, and we follow transformers, the project's
    # reference. The ids differ only where a numeral follows a run of two or more whitespace characters ("\n\n3",
    # "x  12": GPT-2's regex splits the run) or is a non-ASCII numeral after a space (" ½"); ASCII digits are single
    # tokens either way. tests/test_vocab.py pins an example.
    "smollm": None,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


class HfTokenizerVocabulary(seqio.Vocabulary):
    """A HF `tokenizers.Tokenizer` behind seqio's Vocabulary contract.

    Encoding never adds BOS/EOS (seqio appends EOS itself; `add_bos` tells prompt builders whether the model wants BOS).
    Special tokens written in the text, like `<|im_start|>`, encode to their ids. `detokenize` is the exact inverse of
    `encode`. `decode` follows seqio: it maps ids past the vocabulary to `unk_id`, stops before the first EOS, and drops
    padding (id 0) when id 0 is a special token; every other token, special ones included, is written out verbatim.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        source: str = "",
    ):
        super().__init__(extra_ids=0)  # seqio's sentinels are for span corruption, which no decoder-only LM here uses
        self._tokenizer = tokenizer
        self._bos_id, self._eos_id, self._unk_id = bos_id, eos_id, unk_id
        self._source = source
        special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
        self._pad_is_special = self.pad_id in special
        # The post-processor, not a separate flag, decides BOS, so a saved tokenizer.json carries the choice.
        self._add_bos = bos_id is not None and tokenizer.encode("", add_special_tokens=True).ids[:1] == [bos_id]

    # ----- constructors -----

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HfTokenizerVocabulary:
        """A tokenizer.json, with BOS/EOS/UNK from the Hugging Face config files beside it where present."""
        path = pathlib.Path(path)
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable JSON
            raise VocabularyError(f"{path}: not a readable tokenizer.json: {e}") from e
        return cls(tokenizer, **_hf_special_ids(tokenizer, path.parent), source=str(path))

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> HfTokenizerVocabulary:
        """A Hugging Face checkpoint directory holding tokenizer.json."""
        path = pathlib.Path(directory) / TOKENIZER_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {TOKENIZER_JSON}")
        return cls.from_file(path)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> HfTokenizerVocabulary:
        """The byte-level BPE tokenizer a GGUF file embeds (llama.cpp's `tokenizer.ggml.*` metadata)."""
        path = pathlib.Path(path)
        try:
            fields = open_gguf(path).fields
        except CheckpointError as e:
            raise VocabularyError(str(e)) from e

        def optional(key: str, default: Any = None) -> Any:
            return fields[key].contents() if key in fields else default

        def required(key: str) -> Any:
            if key not in fields:
                raise VocabularyError(f"{path}: the GGUF has no {key!r}, so it carries no usable tokenizer")
            return fields[key].contents()

        kind = required("tokenizer.ggml.model")
        if kind != "gpt2":
            raise VocabularyError(
                f"{path}: tokenizer.ggml.model is {kind!r}; only 'gpt2' (byte-level BPE) is supported. "
                f"For a SentencePiece model, load the original tokenizer.model instead."
            )
        pre = optional("tokenizer.ggml.pre", "default")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise VocabularyError(
                f"{path}: tokenizer.ggml.pre is {pre!r}, a pre-tokenizer we do not know; "
                f"supported: {', '.join(sorted(GGUF_PRE_TOKENIZERS))}"
            )
        tokens = required("tokenizer.ggml.tokens")
        tokenizer = _byte_level_bpe(
            tokens,
            merges=required("tokenizer.ggml.merges"),
            token_types=optional("tokenizer.ggml.token_type", [gguf.TokenType.NORMAL] * len(tokens)),
            split=GGUF_PRE_TOKENIZERS[pre],
        )
        bos_id = optional("tokenizer.ggml.bos_token_id")
        if bos_id is not None and optional("tokenizer.ggml.add_bos_token", False):
            tokenizer.post_processor = processors.TemplateProcessing(
                single=[tokens[bos_id], "$A"], special_tokens=[(tokens[bos_id], bos_id)]
            )
        return cls(
            tokenizer,
            bos_id=bos_id,
            eos_id=optional("tokenizer.ggml.eos_token_id"),
            unk_id=optional("tokenizer.ggml.unknown_token_id"),
            source=str(path),
        )

    # ----- seqio.Vocabulary -----

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> list[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self._eos_id in ids:
            ids = ids[: ids.index(self._eos_id)]
        if self._pad_is_special:
            ids = [i for i in ids if i != self.pad_id]
        return self.detokenize(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """A string scalar -> int32 [length]; strings of shape [d0, ..., dk] -> ragged int32 [d0, ..., dk, (length)]."""
        s = tf.convert_to_tensor(s, tf.string)
        values, row_splits = tf.numpy_function(
            self._encode_rows_np, [tf.reshape(s, [-1])], [tf.int32, tf.int64], stateful=False
        )
        values.set_shape([None])
        if s.shape.rank == 0:
            return values  # one row: its ids are all the values
        row_splits.set_shape([None])
        ids = tf.RaggedTensor.from_row_splits(values, row_splits, validate=False)
        shape = tf.shape(s, out_type=tf.int64)
        for axis in range(s.shape.rank - 1, 0, -1):
            ids = tf.RaggedTensor.from_uniform_row_length(ids, shape[axis], validate=False)
        return ids

    def _decode_tf(self, ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor | tf.RaggedTensor:
        """int [..., length] (dense or ragged) -> strings [...]: each innermost row decoded like `_decode`."""
        if isinstance(ids, tf.RaggedTensor):
            if ids.values.shape.rank == 1:
                return self._decode_rows_tf(ids.values, ids.row_splits)
            return ids.with_values(self._decode_tf(ids.values))
        ids = tf.convert_to_tensor(ids)
        shape = tf.shape(ids, out_type=tf.int64)
        num_rows = tf.reduce_prod(shape[:-1])
        strings = self._decode_rows_tf(tf.reshape(ids, [-1]), tf.range(num_rows + 1) * shape[-1])
        strings = tf.reshape(strings, shape[:-1])
        strings.set_shape(ids.shape[:-1])
        return strings

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HfTokenizerVocabulary) and self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    def __repr__(self) -> str:
        return (
            f"HfTokenizerVocabulary({self._source or '<in memory>'}, size={self.vocab_size}, bos={self._bos_id}, "
            f"eos={self._eos_id}, unk={self._unk_id})"
        )

    # ----- plain helpers -----

    @property
    def add_bos(self) -> bool:
        """Whether the model expects BOS before a prompt (GGUF `add_bos_token`, or a HF post-processor that adds it)."""
        return self._add_bos

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped HF tokenizer, for what seqio has no word for (offsets, vocabulary listing)."""
        return self._tokenizer

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many strings at once (the Rust tokenizer runs them in parallel)."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def detokenize(self, ids: Iterable[int]) -> str:
        """The exact inverse of `encode`: every id written out, special tokens and EOS included (ids past the
        vocabulary have no text and write nothing)."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary's spelling of a token (byte-level: " the" is "Ġthe"), or None for an unknown id."""
        return self._tokenizer.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token spelled as the vocabulary spells it, or None."""
        return self._tokenizer.token_to_id(token)

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes tokenizer.json and tokenizer_config.json (special tokens), which `load_vocabulary(directory)` and
        transformers' `AutoTokenizer` both read back."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / TOKENIZER_JSON, self._tokenizer.to_str())
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        for name, token_id in (("bos", self._bos_id), ("eos", self._eos_id), ("unk", self._unk_id)):
            if token_id is not None:
                config[f"{name}_token"] = self.id_to_token(token_id)
        write_text_atomic(directory / _TOKENIZER_CONFIG, json.dumps(config, indent=2) + "\n")
        return directory

    # ----- internals -----

    @functools.cached_property
    def _identity(self) -> tuple[str, int | None, int | None, int | None]:
        digest = hashlib.sha256(self._tokenizer.to_str().encode()).hexdigest()
        return digest, self._bos_id, self._eos_id, self._unk_id

    def _encode_rows_np(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.encode_batch([s.decode("utf-8") for s in strings])
        values = np.fromiter((i for row in rows for i in row), np.int32)
        row_splits = np.cumsum([0] + [len(row) for row in rows], dtype=np.int64)
        return values, row_splits

    def _decode_rows_tf(self, values: tf.Tensor, row_splits: tf.Tensor) -> tf.Tensor:
        strings = tf.numpy_function(self._decode_rows_np, [values, row_splits], tf.string, stateful=False)
        strings.set_shape([None])
        return strings

    def _decode_rows_np(self, values: np.ndarray, row_splits: np.ndarray) -> np.ndarray:
        rows = (values[start:end] for start, end in zip(row_splits[:-1], row_splits[1:]))
        return np.array([self._decode(row).encode("utf-8") for row in rows], dtype=object)


def _byte_level_bpe(
    tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int], split: str | None
) -> tokenizers.Tokenizer:
    """GPT-2-style BPE over byte-level spelled tokens, with control tokens as specials matched whole in the text."""
    tokenizer = tokenizers.Tokenizer(
        models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges])
    )
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    # Both kinds are already in the vocabulary, so adding them keeps their ids and only makes the text match them whole.
    typed = list(zip(tokens, token_types))
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, kind in typed if kind == gguf.TokenType.CONTROL]
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, kind in typed if kind == gguf.TokenType.USER_DEFINED]
    )
    return tokenizer


def _hf_special_ids(tokenizer: tokenizers.Tokenizer, directory: pathlib.Path) -> dict[str, int | None]:
    """bos_id/eos_id/unk_id from tokenizer_config.json (token text), else generation_config.json, else config.json."""
    token_config = _read_json(directory / _TOKENIZER_CONFIG)
    id_configs = [_read_json(directory / name) for name in _ID_CONFIGS]
    ids: dict[str, int | None] = {}
    for name in ("bos", "eos", "unk"):
        token_id = _config_token_id(tokenizer, token_config.get(f"{name}_token"), directory / _TOKENIZER_CONFIG, name)
        if token_id is None:
            found = (_first_id(config.get(f"{name}_token_id")) for config in id_configs)
            token_id = next((i for i in found if i is not None), None)
        ids[f"{name}_id"] = token_id
    return ids


def _config_token_id(tokenizer: tokenizers.Tokenizer, token: Any, path: pathlib.Path, name: str) -> int | None:
    """A tokenizer_config entry (text, or an AddedToken dict with "content") as an id."""
    if isinstance(token, dict):
        token = token.get("content")
    if token is None:
        return None
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise VocabularyError(f"{path}: {name}_token is {token!r}, which is not in the tokenizer's vocabulary")
    return token_id


def _first_id(value: int | list[int] | None) -> int | None:
    """Model configs give one id or a list (several stop tokens); the first is the canonical one."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VocabularyError(f"{path}: not valid JSON: {e}") from e


def load_vocabulary(path_or_name: str | os.PathLike) -> seqio.Vocabulary:
    """The vocabulary of a packaged model name, a .gguf file, a tokenizer.json, a SentencePiece .model file, or a
    Hugging Face directory (tokenizer.json or tokenizer.model inside). Cached per resolved path: GGUFs take seconds."""
    return _load_resolved(resolve_model_path(path_or_name).resolve())


@functools.lru_cache(maxsize=None)
def _load_resolved(path: pathlib.Path) -> seqio.Vocabulary:
    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return HfTokenizerVocabulary.from_directory(path)
        if (path / SENTENCEPIECE_MODEL).is_file():
            return _sentencepiece(path / SENTENCEPIECE_MODEL)
        raise FileNotFoundError(f"{path} holds no tokenizer: expected {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL} in it")
    if path.suffix == ".gguf":
        return HfTokenizerVocabulary.from_gguf(path)
    if path.suffix == ".json":
        return HfTokenizerVocabulary.from_file(path)
    if path.suffix == ".model":
        return _sentencepiece(path)
    raise VocabularyError(
        f"{path}: unknown tokenizer format; expected a .gguf file, a tokenizer.json, a SentencePiece .model file, "
        f"or a directory holding {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}"
    )


def _sentencepiece(path: pathlib.Path) -> seqio.SentencePieceVocabulary:
    """seqio's own SentencePiece vocabulary, loaded now so that a bad file fails here, naming itself."""
    vocab = seqio.SentencePieceVocabulary(str(path))
    try:
        vocab.load_model()
    except Exception as e:  # protobuf and sentencepiece raise their own, unrelated error types
        raise VocabularyError(f"{path}: not a readable SentencePiece model: {e}") from e
    return vocab
