"""Decoder-only feature conversion and greedy packing: (inputs, targets) token ids -> fixed [batch, length] batches.

Each example becomes `inputs + targets` (targets end with EOS); the loss covers target tokens only. Examples are
packed several to a row, each with its own segment id (1, 2, ...; 0 is padding) and positions restarting at 0, so
attention (the model's segment mask) never crosses examples. An example longer than the row loses tokens from the
LEFT of its inputs (the target is what we train on); those are counted.

Batches are a deterministic function of (examples, rates, seed, position): epoch e is N examples (N: all tasks'
examples together) in an order fixed by (seed, e), packed greedily in that order (each epoch on its own: its last row
may be part empty), and the stream of rows over epochs is cut into batches. `PackedBatches.position` (batches
consumed) is all a checkpoint needs to resume the stream exactly: every epoch's order, hence its rows, is a function
of the seed, recomputed rather than stored.

Which N examples, in which order:
- A single task, or a mixture whose rates are proportional to its tasks' sizes (SeqIO's and `register_mixture`'s
  default): the union of the tasks' examples (mixture order: SeqIO sorts tasks by name), every example once per epoch,
  permuted by (seed, e). This is sampling at those rates without replacement.
- A mixture with other rates: each of the epoch's N positions draws its task with probability rate / sum(rates)
  (uniforms from a generator seeded by (seed, e)); the k-th draw of task t is that task's own stream at k, which
  walks task-epochs of the task's examples, task-epoch j permuted by (seed, t, j). A task drawn more often than its
  size repeats its examples, one full pass before any repeat; one drawn less leaves some out of an epoch.

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
import itertools
import math
import re
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

FEATURES = ("tokens", "positions", "segment_ids", "loss_mask", "loss_weights")
FEATURE_DTYPES = {k: np.float32 if k == "loss_weights" else np.int32 for k in FEATURES}
# First entries of the seeds of a rated mixture's two generators, so neither repeats the other's or the union's
# (seed, epoch) stream.
_TASK_DRAWS, _TASK_EPOCHS = 1, 2
UNNAMED_TASK = "examples"  # the one task of a plain list of examples


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
    rows_per_epoch: int  # epoch 0's, as the next two (a rated mixture's epochs hold different examples)
    real_tokens_per_epoch: int
    efficiency: float  # real tokens / token slots in an epoch's rows


def check_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """{task: rate} as floats; a rate that is not a finite number > 0 is an error naming its task."""
    checked = {}
    for task, rate in rates.items():
        checked[task] = float(rate)
        if not (math.isfinite(checked[task]) and checked[task] > 0):
            raise ValueError(f"Mixture task {task!r} has rate {rate!r}: a rate must be a finite number > 0 (leave "
                             f"a task out of the mixture rather than give it rate 0).")
    return checked


@dataclasses.dataclass(frozen=True)
class TaskMixture:
    """Each task's examples ({task: `TrainingExample`s or (inputs, targets[, weight]) tuples}) and its rate; the
    tasks' order is the union's (see the module docstring)."""

    examples: Mapping[str, Sequence[Any]]
    rates: Mapping[str, float]

    def __post_init__(self) -> None:
        if set(self.rates) != set(self.examples):
            raise ValueError(f"A mixture needs one rate per task: tasks {sorted(self.examples)}, rates for "
                             f"{sorted(self.rates)}.")
        object.__setattr__(self, "rates", check_rates({task: self.rates[task] for task in self.examples}))


def load_seqio_mixture(name: str, split: str = "train") -> TaskMixture:
    """Every example of each task of a registered SeqIO task or mixture, read once per task, unshuffled, and each
    task's rate in the mixture (`Mixture.get_rate`: sub-mixtures' rates included; 1.0 for a lone task).

    Tasks come in SeqIO's order (sorted by name); one without `split` is left out, as SeqIO does."""
    import seqio  # noqa: PLC0415

    provider = seqio.get_mixture_or_task(name)
    tasks = [task for task in seqio.get_subtasks(provider) if split in task.splits]
    if not tasks:
        raise ValueError(f"SeqIO task/mixture {name!r} has no task with a {split!r} split.")
    examples = {task.name: _read_task(task, name, split) for task in tasks}
    if not any(examples.values()):
        raise ValueError(f"SeqIO task/mixture {name!r} split {split!r} has no examples.")
    rates = {task.name: provider.get_rate(task) if isinstance(provider, seqio.Mixture) else 1.0 for task in tasks}
    return TaskMixture(examples, rates)


def load_seqio_examples(name: str, split: str = "train") -> list[TrainingExample]:
    """Every example of a registered SeqIO task or mixture, read once, unshuffled: inputs and targets ids, and the
    example's "weight" feature where the task has one (1.0 otherwise).

    The task's own preprocessors tokenize and append EOS to "targets" (see `lsi.self_improve.formats`). A mixture
    is read as the union of its tasks in SeqIO's order, every example once and its rates left out
    (`load_seqio_mixture` keeps them).
    """
    return [example for examples in load_seqio_mixture(name, split).examples.values() for example in examples]


def _read_task(task: Any, name: str, split: str) -> list[TrainingExample]:
    """One SeqIO task's examples, on their own: a mixture's dataset would stop at its first exhausted task (SeqIO
    samples with `stop_on_empty_dataset`) and keep only its output features (no "weight")."""
    import tensorflow as tf  # noqa: PLC0415

    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
    examples = []
    try:
        for ex in dataset.as_numpy_iterator():
            examples.append(TrainingExample(np.asarray(ex["inputs"], np.int32), np.asarray(ex["targets"], np.int32),
                                            float(ex.get("weight", 1.0))))
    except tf.errors.DataLossError as e:
        raise ValueError(_data_loss_message(task, name, split, e)) from None
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

    `examples`: a SeqIO task/mixture name (read with its rates, `load_seqio_mixture`), a `TaskMixture`, or a sequence
    of `TrainingExample`s or (inputs_ids, targets_ids[, weight]) tuples (one task). With `eos_id` set, EOS is appended
    to every target that does not already end with it (a plain list usually lacks it; SeqIO adds it).

    `tasks` names the tasks (a plain list is one task, `UNNAMED_TASK`); `rated` says whether the stream draws tasks
    by their rates (True) or is the union of their examples (False).
    """

    def __init__(self, examples: str | TaskMixture | Sequence[Any], batch_size: int,
                 seq_length: int, seed: int = 0, eos_id: int | None = None, shuffle: bool = True,
                 position: int = 0):
        if isinstance(examples, str):
            examples = load_seqio_mixture(examples)
        elif not isinstance(examples, TaskMixture):
            examples = TaskMixture({UNNAMED_TASK: examples}, {UNNAMED_TASK: 1.0})
        self.batch_size, self.seq_length, self.seed, self.shuffle = batch_size, seq_length, seed, shuffle
        inputs_cut, targets_cut, dropped = self._fit_examples(
            [example for task in examples.examples.values() for example in task], eos_id)
        self.tasks = tuple(examples.examples)
        self._task_sizes = np.array([len(task) for task in examples.examples.values()], np.int64)  # [tasks]
        self._task_starts = np.cumsum(self._task_sizes) - self._task_sizes  # [tasks] each task's first union index
        self._task_of = np.repeat(np.arange(len(self.tasks)), self._task_sizes)  # [examples] task index
        self._rates = np.array([examples.rates[task] for task in self.tasks], np.float64)  # [tasks]
        # Rates proportional to the sizes (the default) are met exactly by the union, each example once an epoch: that
        # stream stays what it was before rates were read, and so do results pinned to it.
        self.rated = not np.allclose(self._rates / self._rates.sum(), self._task_sizes / self._task_sizes.sum(),
                                     rtol=1e-9, atol=0)
        for task, size, rate in zip(self.tasks, self._task_sizes, self._rates):
            if self.rated and not size:
                raise ValueError(f"Mixture task {task!r} has rate {rate} but no examples to draw.")
        self._draw_cdf = np.cumsum(self._rates / self._rates.sum())  # [tasks]
        self._draw_cdf[-1] = 1.0  # a uniform in [0, 1) always lands on a task, whatever the rounding
        self._drawn_before: list[np.ndarray] = [np.zeros(len(self.tasks), np.int64)]  # [epochs + 1][tasks]
        self._epoch_rows: dict[int, list[list[int]]] = {}
        self._row_counts: list[int] = []
        rows = self._rows(0)
        real = int(self._lengths[np.fromiter(itertools.chain.from_iterable(rows), np.int64)].sum())
        self.stats = PackingStats(len(self._examples), inputs_cut, targets_cut, dropped, len(rows), real,
                                  real / (len(rows) * seq_length))
        self.position = position

    def _fit_examples(self, examples: Sequence[Any], eos_id: int | None) -> tuple[int, int, int]:
        """Keeps every example fitted to a row; (inputs truncated, targets truncated, tokens dropped)."""
        if not len(examples):
            raise ValueError("No training examples.")
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
            inp, tgt, icut, tcut = _fit(inp, tgt, self.seq_length)
            inputs_cut += icut
            targets_cut += tcut
            dropped += total - len(inp) - len(tgt)
            self._examples.append((inp, tgt))
            self._weights.append(example.weight)
        self._lengths = np.array([len(i) + len(t) for i, t in self._examples], np.int64)  # [examples]
        return inputs_cut, targets_cut, dropped

    # -- the example stream --

    def _order(self, epoch: int) -> np.ndarray:
        """[examples] union indices of `epoch`'s examples in packing order (see the module docstring)."""
        if self.rated:
            return self._drawn_order(epoch)
        if self.shuffle:
            return np.random.default_rng([self.seed, epoch]).permutation(len(self._examples))
        return np.arange(len(self._examples))

    def _task_draws(self, epoch: int) -> np.ndarray:
        """[examples] the task index drawn at each position of a rated mixture's `epoch`."""
        uniforms = np.random.default_rng([self.seed, _TASK_DRAWS, epoch]).random(len(self._examples))
        return np.searchsorted(self._draw_cdf, uniforms, side="right")

    def _drawn_before_epoch(self, epoch: int) -> np.ndarray:
        """[tasks] how often each task was drawn in epochs 0..epoch-1: where `epoch` starts in each task's stream."""
        while len(self._drawn_before) <= epoch:
            draws = self._task_draws(len(self._drawn_before) - 1)
            self._drawn_before.append(self._drawn_before[-1] + np.bincount(draws, minlength=len(self.tasks)))
        return self._drawn_before[epoch]

    def _task_epoch(self, task: int, task_epoch: int) -> np.ndarray:
        """[task size] the order of `task`'s examples (indices within the task) in its pass `task_epoch`."""
        size = int(self._task_sizes[task])
        if not self.shuffle:
            return np.arange(size)
        return np.random.default_rng([self.seed, _TASK_EPOCHS, task, task_epoch]).permutation(size)

    def _drawn_order(self, epoch: int) -> np.ndarray:
        draws = self._task_draws(epoch)  # [examples]
        before = self._drawn_before_epoch(epoch)  # [tasks]
        order = np.empty(len(draws), np.int64)  # [examples]
        for task, size in enumerate(self._task_sizes):
            at = np.flatnonzero(draws == task)  # [drawn] positions in the epoch that drew this task
            if not len(at):
                continue
            in_task = before[task] + np.arange(len(at))  # [drawn] positions in the task's own stream
            first = in_task[0] // size
            walk = np.concatenate([self._task_epoch(task, j) for j in range(first, in_task[-1] // size + 1)])
            order[at] = self._task_starts[task] + walk[in_task - first * size]
        return order

    # -- layout --

    def _rows(self, epoch: int) -> list[list[int]]:
        """Example indices of each row of `epoch` (greedy next-fit in the epoch's order)."""
        if epoch not in self._epoch_rows:
            rows: list[list[int]] = []
            current: list[int] = []
            used = 0
            for idx in self._order(epoch):
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
        state = {"position": int(self.position), "seed": self.seed, "num_examples": len(self._examples)}
        if self.rated:  # the union stream's states stay what they were
            state["rates"] = self._rates_by_task()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("num_examples", len(self._examples)) != len(self._examples):
            raise ValueError(f"Checkpointed data had {state['num_examples']} examples, this run has "
                             f"{len(self._examples)}: resuming would not continue the same stream.")
        rates = self._rates_by_task() if self.rated else None
        if state.get("rates") != rates:
            raise ValueError(f"Checkpointed data was drawn with mixture rates {state.get('rates')} (None: the union "
                             f"of the tasks), this run's are {rates}: resuming would not continue the same stream.")
        self.position = int(state["position"])

    # -- what was trained on --

    def _rates_by_task(self) -> dict[str, float]:
        return {task: float(rate) for task, rate in zip(self.tasks, self._rates)}

    def examples_per_task(self, position: int | None = None) -> np.ndarray:
        """[tasks] examples of each task in batches 0..position-1 (default: the batches consumed), repeats counted."""
        rows_left = (self.position if position is None else position) * self.batch_size
        counts = np.zeros(len(self.tasks), np.int64)  # [tasks]
        epoch = 0
        while rows_left > 0:
            rows = self._rows(epoch)[:rows_left]
            ids = np.fromiter(itertools.chain.from_iterable(rows), np.int64)  # [examples in those rows]
            counts += np.bincount(self._task_of[ids], minlength=len(self.tasks))
            rows_left -= len(rows)
            epoch += 1
        return counts

    def mixture_record(self) -> dict[str, Any] | None:
        """What a train manifest should say about a mixture (None for a single task): whether the stream is the union
        or drawn by rates, and per task its rate, share of draws (rate / sum of rates), number of examples and
        examples in the batches consumed so far ("consumed")."""
        if len(self.tasks) < 2:
            return None
        consumed = self.examples_per_task()
        shares = self._rates / self._rates.sum()
        return {"sampling": "rates" if self.rated else "union", "batches": int(self.position),
                "tasks": {task: {"rate": float(rate), "share": float(share), "examples": int(size),
                                 "consumed": int(count)}
                          for task, rate, share, size, count in zip(self.tasks, self._rates, shares,
                                                                    self._task_sizes, consumed)}}


def pack_examples(examples: Sequence[Any], seq_length: int,
                  eos_id: int | None = None) -> dict[str, np.ndarray]:
    """All `examples`, in order, packed into as many rows as they need: [rows, seq_length] features."""
    data = PackedBatches(examples, batch_size=1, seq_length=seq_length, eos_id=eos_id, shuffle=False)
    rows = [data.pack_row(r) for r in data._rows(0)]
    return {k: np.stack([row[k] for row in rows]) for k in FEATURES}
