"""The SeqIO side of lsi.vocab: its vocabularies as `seqio.Vocabulary`, tokenizing inside tf.data too.

This module imports TensorFlow and SeqIO, so only what builds SeqIO tasks imports it (lsi.tasks.seqio_tasks and the
format stage's `register_formatted_task`); sampling, evaluation and the library API tokenize through lsi.vocab alone.

    features = {"inputs": seqio.Feature(as_seqio_vocabulary(load_vocabulary("smollm2-135m-instruct")), add_eos=False)}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from lsi.vocab import HfTokenizerVocabulary, SentencePieceVocabulary, VocabularyError, bos_to_prepend


def as_seqio_vocabulary(vocab: Any) -> seqio.Vocabulary:
    """`vocab` (an lsi.vocab vocabulary) as a seqio.Vocabulary with the same ids and text; a seqio.Vocabulary is
    returned as it is."""
    if isinstance(vocab, seqio.Vocabulary):
        return vocab
    if isinstance(vocab, HfTokenizerVocabulary):
        return SeqioHfVocabulary(vocab)
    if isinstance(vocab, SentencePieceVocabulary):
        return _seqio_sentencepiece(str(vocab.model_file))
    raise TypeError(f"{vocab!r} is neither a vocabulary of lsi.vocab nor a seqio.Vocabulary")


def _seqio_sentencepiece(path: str) -> seqio.SentencePieceVocabulary:
    """seqio's own SentencePiece vocabulary (its tf.data side is tf_text's op), loaded now so that a bad file fails
    here, naming itself."""
    vocab = seqio.SentencePieceVocabulary(path)
    try:
        vocab.load_model()
    except Exception as e:  # protobuf and sentencepiece raise their own, unrelated error types
        raise VocabularyError(f"{path}: not a readable SentencePiece model: {e}") from e
    return vocab


class SeqioHfVocabulary(seqio.Vocabulary):
    """An `HfTokenizerVocabulary` as a seqio.Vocabulary: its ids and text in Python, and `encode_tf` / `decode_tf`
    running the Rust tokenizer inside tf.data (through tf.numpy_function).

    Every other public attribute (`add_bos`, `chat_template`, `detokenize`, `encode_batch`, ...) is the wrapped
    vocabulary's, so code handed a task's feature vocabulary (prompt builders, `bos_to_prepend`) works on either."""

    def __init__(self, vocabulary: HfTokenizerVocabulary):
        super().__init__(extra_ids=0)  # seqio's sentinels are for span corruption, which no decoder-only LM here uses
        self._vocabulary = vocabulary

    def __getattr__(self, name: str) -> Any:
        # Called only for names the class lacks. Private names are not forwarded: unpickling looks some up before
        # `_vocabulary` exists, and forwarding those would recurse.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._vocabulary, name)

    @property
    def vocabulary(self) -> HfTokenizerVocabulary:
        return self._vocabulary

    @property
    def bos_id(self) -> int | None:
        return self._vocabulary.bos_id

    @property
    def eos_id(self) -> int | None:
        return self._vocabulary.eos_id

    @property
    def unk_id(self) -> int | None:
        return self._vocabulary.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self._vocabulary.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self._vocabulary.encode(s)

    def _decode(self, ids: Any) -> str:
        # seqio's `decode` has mapped ids past the vocabulary to unk and cut after EOS; ours does the same (a no-op
        # now), cuts EOS itself, and drops special padding.
        return self._vocabulary.decode(ids)

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
        """int [..., length] (dense or ragged) -> strings [...]: each innermost row decoded like `decode`."""
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

    def _encode_rows_np(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self._vocabulary.encode_batch([s.decode("utf-8") for s in strings])
        values = np.fromiter((i for row in rows for i in row), np.int32)
        row_splits = np.cumsum([0] + [len(row) for row in rows], dtype=np.int64)
        return values, row_splits

    def _decode_rows_tf(self, values: tf.Tensor, row_splits: tf.Tensor) -> tf.Tensor:
        strings = tf.numpy_function(self._decode_rows_np, [values, row_splits], tf.string, stateful=False)
        strings.set_shape([None])
        return strings

    def _decode_rows_np(self, values: np.ndarray, row_splits: np.ndarray) -> np.ndarray:
        rows = (values[start:end] for start, end in zip(row_splits[:-1], row_splits[1:]))
        return np.array([self._vocabulary.decode(row).encode("utf-8") for row in rows], dtype=object)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqioHfVocabulary) and self._vocabulary == other._vocabulary

    def __hash__(self) -> int:
        return hash(self._vocabulary)

    def __repr__(self) -> str:
        return f"SeqioHfVocabulary({self._vocabulary!r})"


def prepend_bos_preprocessor(dataset: tf.data.Dataset, output_features: dict[str, seqio.Feature]) -> tf.data.Dataset:
    """A seqio preprocessor (after tokenize): `lsi.vocab.encode_model_input`'s BOS rule on the "inputs" feature."""
    bos = bos_to_prepend(output_features["inputs"].vocabulary)
    if bos is None:
        return dataset

    def prepend(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        inputs = example["inputs"]  # int [length]
        bos_first = tf.constant([bos], inputs.dtype)
        starts_with_bos = tf.reduce_any(tf.equal(inputs[:1], bos_first))  # False for empty inputs
        inputs = tf.cond(starts_with_bos, lambda: inputs, lambda: tf.concat([bos_first, inputs], axis=0))
        return {**example, "inputs": inputs}

    return dataset.map(prepend, num_parallel_calls=tf.data.AUTOTUNE)
