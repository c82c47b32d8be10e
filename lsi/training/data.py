"""Decoder-only feature conversion and greedy packing: (inputs, targets) token ids -> fixed [batch, length] batches.

Each example becomes `inputs + targets` (targets end with EOS); the loss covers target tokens only. Examples are
packed several to a row, each with its own segment id (1, 2, ...; 0 is padding) and positions restarting at 0, so
attention (the model's segment mask) never crosses examples. An example longer than the row loses tokens from the
LEFT of its inputs (the target is what we train on); those are counted.

Batches are a deterministic function of (examples, seed, position): epoch e is the examples in the order of a
permutation seeded by (seed, e), packed greedily in that order, and the stream of rows over epochs is cut into
batches. `PackedBatches.position` (batches consumed) is all a checkpoint needs to resume the stream exactly.

Batch features (numpy, [batch, length]):
  tokens       int32  the packed token ids (0 in padding)
  positions    int32  position within the example
  segment_ids  int32  1.. per example in the row, 0 = padding
  loss_mask    int32  1 where the token is a target token (predicted from the tokens before it in its segment)
  loss_weights float32 the example's weight on its target tokens (1.0 unless the format stage weights examples,
               e.g. by vote share: `FormatStageConfig.example_weight`), 0 elsewhere
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Sequence

import numpy as np

FEATURES = ("tokens", "positions", "segment_ids", "loss_mask", "loss_weights")
FEATURE_DTYPES = {k: np.float32 if k == "loss_weights" else np.int32 for k in FEATURES}


@dataclasses.dataclass(frozen=True)
class TrainingExample:
    """One (inputs, targets) pair of token ids and the weight of its target tokens in the loss."""

    inputs: np.ndarray  # [inputs_len] int32
    targets: np.ndarray  # [targets_len] int32
    weight: float = 1.0

    @classmethod
    def of(cls, example: Any) -> "TrainingExample":
        """A `TrainingExample`, or an (inputs, targets) or (inputs, targets, weight) sequence."""
        if isinstance(example, TrainingExample):
            return example
        inputs, targets, *weight = example
        return cls(np.asarray(inputs, np.int32).reshape(-1), np.asarray(targets, np.int32).reshape(-1),
                   float(weight[0]) if weight else 1.0)


@dataclasses.dataclass(frozen=True)
class PackingStats:
    examples: int
    inputs_truncated: int  # examples that lost tokens from the left of their inputs
    targets_truncated: int  # examples whose target alone was longer than the row (cut on the right)
    tokens_dropped: int
    rows_per_epoch: int
    real_tokens_per_epoch: int
    efficiency: float  # real tokens / token slots in an epoch's rows


def load_seqio_examples(name: str, split: str = "train") -> list[TrainingExample]:
    """Every example of a registered SeqIO task or mixture, read once, unshuffled: inputs and targets ids, and the
    example's "weight" feature where the task has one (1.0 otherwise).

    The task's own preprocessors tokenize and append EOS to "targets" (see `lsi.self_improve.formats`). A mixture
    is read as the union of its tasks, every example once (its rates are not applied: `register_mixture`'s default
    rates, the tasks' sizes, mean exactly that).
    """
    import seqio  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    provider = seqio.get_mixture_or_task(name)
    dataset = provider.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
    examples = []
    try:
        for ex in dataset.as_numpy_iterator():
            examples.append(TrainingExample(np.asarray(ex["inputs"], np.int32), np.asarray(ex["targets"], np.int32),
                                            float(ex.get("weight", 1.0))))
    except tf.errors.DataLossError as e:
        raise ValueError(_data_loss_message(provider, name, split, e)) from None
    if not examples:
        raise ValueError(f"SeqIO task/mixture {name!r} split {split!r} has no examples.")
    return examples


def _data_loss_message(provider: Any, name: str, split: str, error: Exception) -> str:
    """Names the corrupt shard(s) of a task or mixture: tf.data's DataLossError names no file, so each TFRecord shard
    of the split is read on its own (only once reading has failed)."""
    import seqio  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    shards, bad = {}, []
    for task in seqio.get_subtasks(provider):
        if not isinstance(task.source, seqio.TFExampleDataSource):
            continue
        shards[task.name] = [str(shard) for shard in task.source.list_shards(split)]
        for shard in shards[task.name]:
            try:
                for _ in tf.data.TFRecordDataset(shard):
                    pass
            except tf.errors.DataLossError:
                bad.append(f"{shard} (task {task.name!r})")
    reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", error.message, flags=re.DOTALL).strip()
    where = (f"corrupt or truncated TFRecord shard(s) {', '.join(bad)}" if bad else
             f"a corrupt or truncated record among {shards}")
    return (f"SeqIO task/mixture {name!r} split {split!r}: {where} ({reason}). Rerun the stage that wrote them "
            f"(the format stage for lsi's own tasks).")


def _fit(inputs: np.ndarray, targets: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    targets_cut = len(targets) > length
    if targets_cut:
        targets = targets[:length]
    room = length - len(targets)
    inputs_cut = len(inputs) > room
    if inputs_cut:
        inputs = inputs[len(inputs) - room:] if room else inputs[:0]
    return inputs, targets, inputs_cut, targets_cut


class PackedBatches:
    """An endless, resumable iterator of packed numpy batches (see the module docstring).

    `examples`: a SeqIO task/mixture name, or a sequence of `TrainingExample`s or (inputs_ids, targets_ids[, weight])
    tuples. With `eos_id` set, EOS is appended to every target that does not already end with it (a plain list
    usually lacks it; SeqIO adds it).
    """

    def __init__(self, examples: str | Sequence[Any], batch_size: int,
                 seq_length: int, seed: int = 0, eos_id: int | None = None, shuffle: bool = True,
                 position: int = 0):
        if isinstance(examples, str):
            examples = load_seqio_examples(examples)
        if not len(examples):
            raise ValueError("No training examples.")
        self.batch_size, self.seq_length, self.seed, self.shuffle = batch_size, seq_length, seed, shuffle
        inputs_cut = targets_cut = dropped = 0
        self._examples: list[tuple[np.ndarray, np.ndarray]] = []
        self._weights: list[float] = []
        for i, example in enumerate(examples):
            example = TrainingExample.of(example)
            inp, tgt = example.inputs, example.targets
            if not example.weight >= 0:
                raise ValueError(f"Example {i} has weight {example.weight}; weights must be >= 0.")
            if eos_id is not None and (not len(tgt) or tgt[-1] != eos_id):
                tgt = np.append(tgt, np.int32(eos_id))
            if not len(tgt):
                raise ValueError(f"Example {i} has an empty target.")
            total = len(inp) + len(tgt)
            inp, tgt, icut, tcut = _fit(inp, tgt, seq_length)
            inputs_cut += icut
            targets_cut += tcut
            dropped += total - len(inp) - len(tgt)
            self._examples.append((inp, tgt))
            self._weights.append(example.weight)
        self._lengths = np.array([len(i) + len(t) for i, t in self._examples], np.int64)
        self._epoch_rows: dict[int, list[list[int]]] = {}
        self._row_counts: list[int] = []
        rows = self._rows(0)
        real = int(self._lengths.sum())
        self.stats = PackingStats(len(self._examples), inputs_cut, targets_cut, dropped, len(rows), real,
                                  real / (len(rows) * seq_length))
        self.position = position

    # -- layout --

    def _rows(self, epoch: int) -> list[list[int]]:
        """Example indices of each row of `epoch` (greedy next-fit in the epoch's shuffled order)."""
        if epoch not in self._epoch_rows:
            order = (np.random.default_rng([self.seed, epoch]).permutation(len(self._examples)) if self.shuffle
                     else np.arange(len(self._examples)))
            rows: list[list[int]] = []
            current: list[int] = []
            used = 0
            for idx in order:
                n = int(self._lengths[idx])
                if current and used + n > self.seq_length:
                    rows.append(current)
                    current, used = [], 0
                current.append(int(idx))
                used += n
            rows.append(current)
            # Keep only a few epochs: a batch spans at most two.
            for old in [e for e in self._epoch_rows if abs(e - epoch) > 1]:
                del self._epoch_rows[old]
            self._epoch_rows[epoch] = rows
        return self._epoch_rows[epoch]

    def _row(self, index: int) -> list[int]:
        # Row counts can differ between epochs (the order changes the packing): walk the remembered counts.
        epoch, offset = 0, index
        while True:
            if epoch == len(self._row_counts):
                self._row_counts.append(len(self._rows(epoch)))
            if offset < self._row_counts[epoch]:
                return self._rows(epoch)[offset]
            offset -= self._row_counts[epoch]
            epoch += 1

    def pack_row(self, example_ids: Sequence[int]) -> dict[str, np.ndarray]:
        """One packed row of the given examples (they must fit)."""
        row = {k: np.zeros(self.seq_length, FEATURE_DTYPES[k]) for k in FEATURES}
        start = 0
        for seg, idx in enumerate(example_ids, start=1):
            inp, tgt = self._examples[idx]
            n = len(inp) + len(tgt)
            row["tokens"][start:start + n] = np.concatenate([inp, tgt])
            row["positions"][start:start + n] = np.arange(n)
            row["segment_ids"][start:start + n] = seg
            row["loss_mask"][start + len(inp):start + n] = 1
            row["loss_weights"][start + len(inp):start + n] = self._weights[idx]
            start += n
        return row

    def batch_at(self, position: int) -> dict[str, np.ndarray]:
        rows = [self.pack_row(self._row(position * self.batch_size + r)) for r in range(self.batch_size)]
        return {k: np.stack([row[k] for row in rows]) for k in FEATURES}

    # -- iteration and state --

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"position": int(self.position), "seed": self.seed, "num_examples": len(self._examples)}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("num_examples", len(self._examples)) != len(self._examples):
            raise ValueError(f"Checkpointed data had {state['num_examples']} examples, this run has "
                             f"{len(self._examples)}: resuming would not continue the same stream.")
        self.position = int(state["position"])


def pack_examples(examples: Sequence[Any], seq_length: int,
                  eos_id: int | None = None) -> dict[str, np.ndarray]:
    """All `examples`, in order, packed into as many rows as they need: [rows, seq_length] features."""
    data = PackedBatches(examples, batch_size=1, seq_length=seq_length, eos_id=eos_id, shuffle=False)
    rows = [data.pack_row(r) for r in data._rows(0)]
    return {k: np.stack([row[k] for row in rows]) for k in FEATURES}
