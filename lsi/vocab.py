"""Tokenizers with seqio's Vocabulary contract, without TensorFlow: HF `tokenizers`, and SentencePiece models.

`load_vocabulary(path_or_name)` takes a packaged model name (`smollm2-135m-instruct`), a .gguf file (its embedded
tokenizer), a tokenizer.json, a SentencePiece .model file, or a Hugging Face directory, and caches the result.

Chat templates: an HF vocabulary also carries its checkpoint's chat template and the texts of its special tokens
(GGUF `tokenizer.chat_template*`, tokenizer_config.json, chat_template.jinja), and renders conversations with them
exactly as `transformers`' `apply_chat_template` does (lsi.chat_template). `chat_template_of(vocab)` answers for any
vocabulary, None for SentencePiece ones.

Ids and seqio: seqio pads every sequence with 0 and treats 0 as padding in its feature converters, so `pad_id` is 0
whatever the model calls its own padding token. In SmolLM2 id 0 is `<|endoftext|>`, which the model never needs inside
a target; in GPT-2/Qwen2 vocabularies id 0 is "!", which seqio would then also mask out of loss weights.

No TensorFlow here: sampling, evaluation and the library API tokenize in Python, and importing TF costs seconds and
fills the log. The vocabularies follow seqio's contract (`encode`, `decode` stopping at EOS, `vocab_size`, `pad_id`
0) in plain Python; stages that build SeqIO tasks wrap them with `lsi.seqio_vocab.as_seqio_vocabulary`, which adds
the tf.data side (`encode_tf`, `decode_tf`, `prepend_bos_preprocessor`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import gguf
import numpy as np
import sentencepiece
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from lsi.chat_template import ChatTemplate, ChatTemplateError, normalize_templates, render_chat, select_template
from lsi.checkpoints.gguf_file import open_gguf
from lsi.checkpoints.layout import CheckpointError
from lsi.checkpoints.registry import resolve_model_path
from lsi.io_utils import write_text_atomic

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
# Hugging Face files that name the special tokens, most specific first: the tokenizer's own config names tokens by
# their text, the model configs by id (generation_config is what `generate` stops on).
_TOKENIZER_CONFIG = "tokenizer_config.json"
_ID_CONFIGS = ("generation_config.json", "config.json")
# Older checkpoints name special tokens here; transformers lets it override tokenizer_config.json's entries unless
# that file lists `added_tokens_decoder` (then it ignores this file).
_SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# Chat templates outside tokenizer_config.json: transformers' own files (which take priority over the config's
# entry), and processors' older chat_template.json, read only when nothing else carries a template.
_CHAT_TEMPLATE_FILE = "chat_template.jinja"
_CHAT_TEMPLATE_DIR = "additional_chat_templates"
_PROCESSOR_CHAT_TEMPLATE = "chat_template.json"
# The special tokens transformers hands a chat template as variables (`bos_token`, ...), in its order.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# seqio's padding id (seqio.vocabularies.PAD_ID), fixed whatever the model calls its own padding token.
PAD_ID = 0


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


# GGUF `tokenizer.ggml.<key>` ids of the special tokens transformers names when it loads a GGUF.
_GGUF_SPECIAL_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _gguf_special_ids(path: pathlib.Path, optional: Callable[..., Any], num_tokens: int) -> dict[str, int | None]:
    """bos/eos/unk/pad token ids from `tokenizer.ggml.*_token_id`, each checked to be a token of the vocabulary."""
    ids = {}
    for name, key in _GGUF_SPECIAL_IDS.items():
        token_id = optional(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= token_id < num_tokens:
            raise VocabularyError(f"{path}: tokenizer.ggml.{key} is {token_id}, outside the {num_tokens} tokens")
        ids[name] = token_id
    return ids


def _gguf_chat_templates(fields: dict[str, Any]) -> dict[str, str]:
    """llama.cpp's layout: the default template under `tokenizer.chat_template`, others under
    `tokenizer.chat_template.<name>` (transformers reads only the first; the default renders the same either way)."""
    templates = {}
    if "tokenizer.chat_template" in fields:
        templates["default"] = fields["tokenizer.chat_template"].contents()
    prefix = "tokenizer.chat_template."
    templates.update({key[len(prefix):]: fields[key].contents() for key in fields if key.startswith(prefix)})
    return templates


class HfTokenizerVocabulary:
    """A HF `tokenizers.Tokenizer` behind seqio's Vocabulary contract (in Python; `lsi.seqio_vocab` adds tf.data).

    Encoding never adds BOS/EOS (seqio appends EOS itself; `add_bos` tells prompt builders whether the model wants BOS).
    Special tokens written in the text, like `<|im_start|>`, encode to their ids. `detokenize` is the exact inverse of
    `encode`. `decode` follows seqio: it maps ids past the vocabulary to `unk_id`, stops before the first EOS, and drops
    padding (id 0) when id 0 is a special token; every other token, special ones included, is written out verbatim.

    `chat_template` is the checkpoint's template (a string, or named strings); `special_tokens` maps
    `SPECIAL_TOKEN_NAMES` (and any model-specific `*_token` names) to token texts as the source names them, which
    templates see as variables. Without `special_tokens`, the texts of `bos_id`, `eos_id` and `unk_id` are used.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        source: str = "",
        chat_template: ChatTemplate | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ):
        self._tokenizer = tokenizer
        self._bos_id, self._eos_id, self._unk_id = bos_id, eos_id, unk_id
        self._source = source
        try:
            self._chat_template = normalize_templates(chat_template, source or "chat_template")
        except ChatTemplateError as e:
            raise VocabularyError(str(e)) from e
        if special_tokens is None:
            named_ids = (("bos_token", bos_id), ("eos_token", eos_id), ("unk_token", unk_id))
            special_tokens = {name: tokenizer.id_to_token(i) for name, i in named_ids if i is not None}
        self._special_tokens = {name: text for name, text in special_tokens.items() if text is not None}
        special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
        self._pad_is_special = self.pad_id in special
        # The post-processor, not a separate flag, decides BOS, so a saved tokenizer.json carries the choice.
        self._add_bos = bos_id is not None and tokenizer.encode("", add_special_tokens=True).ids[:1] == [bos_id]

    # ----- constructors -----

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HfTokenizerVocabulary:
        """A tokenizer.json, with special tokens and the chat template from the Hugging Face files beside it where
        present (tokenizer_config.json, special_tokens_map.json, chat_template.jinja; ids also from
        generation_config.json and config.json).

        BOS: tokenizer.json's post-processor decides, as in transformers, which ignores tokenizer_config.json's
        `add_bos_token` whenever a tokenizer.json is present (a disagreement is logged)."""
        path = pathlib.Path(path)
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable JSON
            raise VocabularyError(f"{path}: not a readable tokenizer.json: {e}") from e
        config = _HfTokenConfig.read(path.parent)
        vocab = cls(
            tokenizer,
            **_hf_special_ids(tokenizer, path.parent, config),
            source=str(path),
            chat_template=_hf_chat_template(path.parent, config),
            special_tokens=_hf_special_texts(tokenizer, config),
        )
        flag = config.values.get("add_bos_token")
        if isinstance(flag, bool) and flag != vocab.add_bos:
            log.warning(
                "%s: add_bos_token is %s, but the post-processor of %s %s BOS; following the post-processor, as "
                "transformers does", config.origin("add_bos_token"), flag, path, "adds" if vocab.add_bos else "adds no",
            )
        return vocab

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
        ids = _gguf_special_ids(path, optional, len(tokens))
        bos_id = ids["bos_token"]
        if bos_id is not None and optional("tokenizer.ggml.add_bos_token", False):
            tokenizer.post_processor = processors.TemplateProcessing(
                single=[tokens[bos_id], "$A"], special_tokens=[(tokens[bos_id], bos_id)]
            )
        templates = _gguf_chat_templates(fields)
        return cls(
            tokenizer,
            bos_id=bos_id,
            eos_id=ids["eos_token"],
            unk_id=ids["unk_token"],
            source=str(path),
            chat_template=templates or None,
            special_tokens={name: tokens[i] for name, i in ids.items() if i is not None},
        )

    # ----- seqio's Vocabulary contract (no extra ids: seqio's sentinels are for span corruption, unused here) -----

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
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, s: str) -> list[int]:
        """`s` as ids, without BOS or EOS."""
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """seqio's decode: ids past the vocabulary become `unk_id`, the text stops before the first EOS, and padding
        is dropped when id 0 is a special token."""
        ids, size = _id_list(ids), self.vocab_size
        if self._unk_id is not None:
            ids = [self._unk_id if i >= size else i for i in ids]
        if self._eos_id in ids:
            ids = ids[: ids.index(self._eos_id)]
        if self._pad_is_special:
            ids = [i for i in ids if i != self.pad_id]
        return self.detokenize(ids)

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
    def chat_template(self) -> ChatTemplate | None:
        """The checkpoint's chat template: a string, named strings ({"default": ..., "tool_use": ...}), or None."""
        return self._chat_template

    @property
    def special_token_texts(self) -> dict[str, str]:
        """The special tokens by name, as the source names them ({"bos_token": "<|im_start|>", ...}): the variables
        a chat template sees. A name the source does not give is absent (a template then renders it as "")."""
        return dict(self._special_tokens)

    @property
    def model_pad_id(self) -> int | None:
        """The model's own padding token (GGUF `padding_token_id`, tokenizer_config's `pad_token`), for exports;
        not seqio's `pad_id`, which is always 0."""
        text = self._special_tokens.get("pad_token")
        return None if text is None else self._tokenizer.token_to_id(text)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        template_name: str | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """A conversation ([{"role": ..., "content": ...}, ...]) as text, rendered by the checkpoint's template exactly
        as transformers' `apply_chat_template(messages, tokenize=False, ...)` renders it. Unlike transformers, the
        generation prompt is on by default: lsi mostly renders prompts for the model to continue.

        `template_name` picks one of several named templates (else "tool_use" when `tools` are given and it exists,
        else "default"); `kwargs` are further template variables (e.g. Llama 3's `date_string`). A template's
        `raise_exception(...)` surfaces as `ChatTemplateError`; a vocabulary without a template raises
        VocabularyError."""
        if self._chat_template is None:
            raise VocabularyError(
                f"{self._source or 'this in-memory tokenizer'} carries no chat template, so it cannot render a "
                f"conversation; use prompt_style='plain' (plain few-shot text) for this model"
            )
        where = f"the chat template of {self._source or 'this tokenizer'}"
        template = select_template(self._chat_template, template_name, tools is not None, where=where)
        return render_chat(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
            special_tokens=self._special_tokens,
            where=where,
            **kwargs,
        )

    def apply_chat_template_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        template_name: str | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """`apply_chat_template`'s text as ids, as transformers gives them with `tokenize=True`: the text encoded
        without adding special tokens (a template that wants BOS writes `bos_token` itself)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, template_name, **kwargs))

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped HF tokenizer, for what the Vocabulary contract has no word for (offsets, vocabulary listing)."""
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
        """Writes tokenizer.json and tokenizer_config.json (every special token, `add_bos_token`, the chat template;
        named templates in transformers' list form), which `load_vocabulary(directory)` and transformers'
        `AutoTokenizer` both read back: the same ids, BOS rule and template renderings.

        BOS travels in tokenizer.json's post-processor (what transformers follows); `add_bos_token` restates it for
        tools that read only the config (llama.cpp's converter). Chat template files that would take priority over
        the config's entry (chat_template.jinja, additional_chat_templates/*.jinja, chat_template.json) are removed."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / TOKENIZER_JSON, self._tokenizer.to_str())
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **self._special_tokens}
        for name, token_id in (("bos", self._bos_id), ("eos", self._eos_id), ("unk", self._unk_id)):
            if token_id is not None:  # the ids win over a disagreeing text, so that they round-trip
                config[f"{name}_token"] = self.id_to_token(token_id)
        config["add_bos_token"] = self._add_bos
        if isinstance(self._chat_template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self._chat_template.items()]
        elif self._chat_template is not None:
            config["chat_template"] = self._chat_template
        stale = [directory / _CHAT_TEMPLATE_FILE, directory / _PROCESSOR_CHAT_TEMPLATE]
        stale += sorted((directory / _CHAT_TEMPLATE_DIR).glob("*.jinja"))
        for path in stale:
            path.unlink(missing_ok=True)
        write_text_atomic(directory / _TOKENIZER_CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return directory

    # ----- internals -----

    @functools.cached_property
    def _identity(self) -> tuple[Any, ...]:
        digest = hashlib.sha256(self._tokenizer.to_str().encode()).hexdigest()
        template = self._chat_template
        if isinstance(template, dict):
            template = tuple(sorted(template.items()))
        specials = tuple(sorted(self._special_tokens.items()))
        return digest, self._bos_id, self._eos_id, self._unk_id, template, specials


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


@dataclasses.dataclass(frozen=True)
class _HfTokenConfig:
    """tokenizer_config.json merged with special_tokens_map.json as transformers merges them, remembering which file
    gave each key (for error messages)."""

    values: dict[str, Any]
    origins: dict[str, pathlib.Path]
    directory: pathlib.Path

    @classmethod
    def read(cls, directory: pathlib.Path) -> _HfTokenConfig:
        values = _read_json(directory / _TOKENIZER_CONFIG)
        origins = dict.fromkeys(values, directory / _TOKENIZER_CONFIG)
        if "added_tokens_decoder" not in values:
            special_map = _read_json(directory / _SPECIAL_TOKENS_MAP)
            values.update(special_map)
            origins.update(dict.fromkeys(special_map, directory / _SPECIAL_TOKENS_MAP))
        return cls(values, origins, directory)

    def origin(self, key: str) -> pathlib.Path:
        return self.origins.get(key, self.directory / _TOKENIZER_CONFIG)


def _hf_special_ids(
    tokenizer: tokenizers.Tokenizer, directory: pathlib.Path, config: _HfTokenConfig | None = None
) -> dict[str, int | None]:
    """bos_id/eos_id/unk_id from tokenizer_config.json or special_tokens_map.json (token text), else
    generation_config.json, else config.json."""
    config = config or _HfTokenConfig.read(directory)
    id_configs = [_read_json(directory / name) for name in _ID_CONFIGS]
    ids: dict[str, int | None] = {}
    for name in ("bos", "eos", "unk"):
        key = f"{name}_token"
        token_id = _config_token_id(tokenizer, config.values.get(key), config.origin(key), name)
        if token_id is None:
            found = (_first_id(id_config.get(f"{name}_token_id")) for id_config in id_configs)
            token_id = next((i for i in found if i is not None), None)
        ids[f"{name}_id"] = token_id
    return ids


def _hf_special_texts(tokenizer: tokenizers.Tokenizer, config: _HfTokenConfig) -> dict[str, str]:
    """The special tokens transformers hands a template: `SPECIAL_TOKEN_NAMES` that the config names (each must be in
    the vocabulary), plus model-specific `*_token` texts and `extra_special_tokens` entries (e.g. "image_token")."""
    texts = {}
    for key in SPECIAL_TOKEN_NAMES:
        if _config_token_id(tokenizer, config.values.get(key), config.origin(key), key.removesuffix("_token")) is None:
            continue
        value = config.values[key]
        texts[key] = value["content"] if isinstance(value, dict) else value
    for key, value in config.values.items():
        if key.endswith("_token") and key not in SPECIAL_TOKEN_NAMES and isinstance(value, str):
            texts[key] = value
    extra = config.values.get("extra_special_tokens")
    if isinstance(extra, dict):  # a list there holds unnamed extra tokens, which templates do not see
        texts.update({key: value for key, value in extra.items() if isinstance(value, str)})
    return texts


def _hf_chat_template(directory: pathlib.Path, config: _HfTokenConfig) -> ChatTemplate | None:
    """The chat template(s) of a Hugging Face directory, where transformers looks for them: chat_template.jinja and
    additional_chat_templates/<name>.jinja first, else tokenizer_config.json's `chat_template` (a string or a list of
    named templates); processors' chat_template.json last."""
    templates = {}
    if (directory / _CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (directory / _CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    for path in sorted((directory / _CHAT_TEMPLATE_DIR).glob("*.jinja")):
        templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    value, where = templates or config.values.get("chat_template"), config.origin("chat_template")
    if value is None:
        where = directory / _PROCESSOR_CHAT_TEMPLATE
        value = _read_json(where).get("chat_template")
    try:
        return normalize_templates(value, f"{where}: chat_template")
    except ChatTemplateError as e:
        raise VocabularyError(str(e)) from e


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


class SentencePieceVocabulary:
    """A SentencePiece .model file behind seqio's Vocabulary contract, with `seqio.SentencePieceVocabulary`'s ids and
    text (no extra ids), through the `sentencepiece` package alone; `lsi.seqio_vocab` hands seqio its own class over
    the same file for tf.data. BOS is never prepended (`add_bos` is False), as seqio's own models are trained."""

    def __init__(self, model_file: str | os.PathLike):
        self._model_file = pathlib.Path(model_file)
        self._model = self._model_file.read_bytes()
        self._processor = self._load_processor()

    def _load_processor(self) -> sentencepiece.SentencePieceProcessor:
        try:
            return sentencepiece.SentencePieceProcessor(model_proto=self._model)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError for a bad proto
            raise VocabularyError(f"{self._model_file}: not a readable SentencePiece model: {e}") from e

    def __getstate__(self) -> dict[str, Any]:
        """gin deep-copies vocabularies it passes as arguments; the processor is rebuilt from the model bytes."""
        return {key: value for key, value in self.__dict__.items() if key != "_processor"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._processor = self._load_processor()

    @property
    def model_file(self) -> pathlib.Path:
        return self._model_file

    @property
    def tokenizer(self) -> sentencepiece.SentencePieceProcessor:
        """The SentencePiece processor (seqio's name for it)."""
        return self._processor

    @property
    def add_bos(self) -> bool:
        return False

    @property
    def bos_id(self) -> int | None:
        return self._processor.bos_id()

    @property
    def eos_id(self) -> int | None:
        return self._processor.eos_id()

    @property
    def unk_id(self) -> int | None:
        return self._processor.unk_id()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def vocab_size(self) -> int:
        return self._processor.GetPieceSize()

    def encode(self, s: str) -> list[int]:
        """`s` as ids, without BOS or EOS."""
        return self._processor.EncodeAsIds(s)

    def decode(self, ids: Iterable[int]) -> str:
        """seqio's decode: ids past the vocabulary become `unk_id`, and the text stops at the first EOS (kept in the
        ids, as seqio keeps it; SentencePiece writes control tokens as nothing)."""
        unk_id, size, eos_id = self.unk_id, self.vocab_size, self.eos_id
        ids = [unk_id if i >= size else i for i in _id_list(ids)]
        if eos_id in ids:
            ids = ids[: ids.index(eos_id) + 1]
        return self._processor.DecodeIds(ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentencePieceVocabulary) and self._model == other._model

    def __hash__(self) -> int:
        return hash(self._model)

    def __repr__(self) -> str:
        return f"SentencePieceVocabulary({self._model_file}, size={self.vocab_size})"


# What `load_vocabulary` returns.
Vocabulary = HfTokenizerVocabulary | SentencePieceVocabulary


def load_vocabulary(path_or_name: str | os.PathLike) -> Vocabulary:
    """The vocabulary of a packaged model name, a .gguf file, a tokenizer.json, a SentencePiece .model file, or a
    Hugging Face directory (tokenizer.json or tokenizer.model inside). Cached per resolved path: GGUFs take seconds."""
    return _load_resolved(resolve_model_path(path_or_name).resolve())


@functools.lru_cache(maxsize=None)
def _load_resolved(path: pathlib.Path) -> Vocabulary:
    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return HfTokenizerVocabulary.from_directory(path)
        if (path / SENTENCEPIECE_MODEL).is_file():
            return SentencePieceVocabulary(path / SENTENCEPIECE_MODEL)
        raise FileNotFoundError(f"{path} holds no tokenizer: expected {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL} in it")
    if path.suffix == ".gguf":
        return HfTokenizerVocabulary.from_gguf(path)
    if path.suffix == ".json":
        return HfTokenizerVocabulary.from_file(path)
    if path.suffix == ".model":
        return SentencePieceVocabulary(path)
    raise VocabularyError(
        f"{path}: unknown tokenizer format; expected a .gguf file, a tokenizer.json, a SentencePiece .model file, "
        f"or a directory holding {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}"
    )


def chat_template_of(vocab: Any) -> ChatTemplate | None:
    """The chat template a vocabulary carries (ours, or its SeqIO adapter), or None (always for SentencePiece
    vocabularies, which have no place for one): lets callers choose a prompt style without knowing the class."""
    return getattr(vocab, "chat_template", None)


def bos_to_prepend(vocab: Any) -> int | None:
    """The BOS id that model inputs start with, or None when the tokenizer adds no BOS (SmolLM2, Qwen2; SentencePiece
    vocabularies, as seqio's own models are trained). `vocab`: ours, or any seqio.Vocabulary."""
    if not getattr(vocab, "add_bos", False) or vocab.bos_id is None:
        return None
    return int(vocab.bos_id)


def encode_model_input(vocab: Any, text: str) -> list[int]:
    """`text` as model input ids: BOS first exactly when the tokenizer adds it, and never twice (a chat template
    such as Llama 3's writes BOS itself)."""
    ids = list(vocab.encode(text))
    bos = bos_to_prepend(vocab)
    if bos is not None and ids[:1] != [bos]:
        ids.insert(0, bos)
    return ids


def _id_list(ids: Iterable[int]) -> list[int]:
    """Ids as Python ints from a list or an array (numpy, JAX, an eager TF tensor), converted whole: iterating a
    tensor makes one scalar tensor per id, hundreds of times slower."""
    if hasattr(ids, "__array__"):
        return np.asarray(ids).tolist()
    return [int(i) for i in ids]
