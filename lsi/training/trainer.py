"""The fine-tuning loop, in t5x's shape: a train state; `make_train_step` builds a partitioned, jitted
`train_step(state, batch) -> (state, metrics)` from a `LossFn` and a `Parameterization` (what trains: every
weight, or LoRA adapters on frozen ones) with gradient accumulation; `restore_or_init` resumes
from orbax checkpoints that also hold the data position (exact resume); `MetricsLogger` owns timing, MFU, the
non-finite guard and the metric writers; `train` is the loop over them.

    state, summary = train(TrainConfig(steps=100, ...), model_cfg, "smollm2-135m-instruct", batches, "runs/ft")

Loss (`cross_entropy_loss`, the default `LossFn`): token-level cross entropy over target tokens, sum / number of
target tokens in the whole batch (with `num_microbatches` > 1 the per-microbatch gradient sums are added and divided
by the batch's total, so accumulation equals one big batch). Another loss is a `LossFn` passed to `train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import tempfile
import time
from typing import Any, Callable, Iterator, Protocol, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from lsi.io_utils import as_path, is_local, upload_tree, write_json_atomic, write_text_atomic
from lsi.models import Transformer, TransformerConfig, abstract_params, param_logical_axes
from lsi.partitioning import MeshConfig, activation_sharding, constrain, logical_sharding, make_mesh, tree_shardings
from lsi.training.checkpointing import Checkpointer
from lsi.training.data import FEATURE_DTYPES, FEATURES, PackingStats
from lsi.training.lora import LoraConfig, LoraParams
from lsi.training.optimizers import OptimizerConfig, learning_rate_schedule, make_optimizer, optimizer_state_axes

log = logging.getLogger(__name__)

BATCH_AXES = ("batch", "length")


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves together (float32 []); written out because `optax.global_norm` is deprecated and
    `optax.tree` is missing from the optax releases users on older JAX pin."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; training stopped without checkpointing the bad state."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000  # optimizer steps
    batch_size: int = 32  # packed rows per step (global, across every data-parallel device)
    seq_length: int = 1024  # tokens per packed row
    num_microbatches: int = 1
    mesh: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    checkpoint_every: int = 1000
    keep_checkpoints: int | None = 3
    log_every: int = 50
    seed: int = 0
    optimizer: OptimizerConfig = OptimizerConfig()
    dtype: Any = None  # compute dtype; None keeps the model config's
    peak_flops_per_s: float | None = None  # all devices together; enables the MFU metric
    progress_bar: bool = True
    export_dtype: str = "float32"  # weights of the exported HF directory: float32 or bfloat16
    lora: LoraConfig | None = None  # LoRA adapters on the frozen model instead of full fine-tuning

    def __post_init__(self) -> None:
        # 0 steps would export the starting model unchanged as "trained": a zero-step control evaluates the base
        # model instead.
        if self.steps < 1:
            raise ValueError(f"TrainConfig.steps must be >= 1, got {self.steps}.")
        if self.batch_size % self.num_microbatches:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of "
                             f"num_microbatches={self.num_microbatches}.")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any  # float32 master weights, as the `Parameterization` lays them out
    opt_state: Any  # of the trainable params only


# --- what is trained ---------------------------------------------------------------------------------------------

class Parameterization(Protocol):
    """What the train step optimises, built over the model's params: the layout of the state's params, which of their
    leaves train (`is_trainable`: a bool per leaf, or a prefix of the tree), and the model params they stand for
    (what the loss applies the model to and what export writes)."""

    def init(self, model_params: Any) -> Any: ...
    def abstract(self, model_cfg: TransformerConfig) -> Any: ...
    def logical_axes(self, model_cfg: TransformerConfig) -> Any: ...
    def is_trainable(self, params: Any) -> Any: ...
    def model_params(self, params: Any) -> Any: ...


@dataclasses.dataclass(frozen=True)
class FullFineTuning:
    """Every model parameter trains."""

    def init(self, model_params: Any) -> Any:
        return model_params

    def abstract(self, model_cfg: TransformerConfig) -> Any:
        return abstract_params(model_cfg)

    def logical_axes(self, model_cfg: TransformerConfig) -> Any:
        return param_logical_axes(model_cfg)

    def is_trainable(self, params: Any) -> bool:
        del params
        return True

    def model_params(self, params: Any) -> Any:
        return params


def parameterization(config: TrainConfig) -> Parameterization:
    return LoraParams(config.lora, config.seed) if config.lora is not None else FullFineTuning()


def trainable_mask(params_layout: Parameterization, params: Any) -> Any:
    """`is_trainable` broadcast to a bool on every leaf of `params` (which may be ShapeDtypeStructs)."""
    return jax.tree.map(lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub),
                        params_layout.is_trainable(params), params)


def select(tree: Any, mask: Any, trainable: bool) -> Any:
    """`tree` with None in place of the leaves whose mask is not `trainable` (an empty subtree to jax and optax)."""
    return jax.tree.map(lambda flag, x: x if flag == trainable else None, mask, tree)


def combine(mask: Any, trainable: Any, frozen: Any) -> Any:
    """The inverse of `select`: each leaf from `trainable` where the mask is set, else from `frozen`."""
    return jax.tree.map(lambda flag, t, f: t if flag else f, mask, trainable, frozen)


# --- loss -------------------------------------------------------------------------------------------------------

def target_token_stats(logits: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of cross entropy, number correct, number of target tokens) over the batch's predicted target tokens,
    each token counted with its example's weight when the batch has `loss_weights`.

    logits [batch, length, vocab] at position t predict tokens[t + 1]; a token is scored when it is a target token
    and its predecessor is in the same segment (so no prediction crosses examples in a packed row). The last
    position predicts nothing: it gets weight 0 rather than being sliced off, since slicing the logits to
    length - 1 costs a padded copy of the [batch, length, vocab] gradient in the backward pass.
    """
    tokens, seg = batch["tokens"], batch["segment_ids"]
    next_weights = ((batch["loss_mask"][:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
                    ).astype(jnp.float32)
    if "loss_weights" in batch:  # examples weighted by the format stage (e.g. by vote share); 1.0 changes nothing
        next_weights = next_weights * batch["loss_weights"][:, 1:]
    weights = jnp.pad(next_weights, ((0, 0), (0, 1)))  # [batch, length]
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))  # [batch, length]; the pad is never scored
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss_sum = jnp.sum((log_z - target_logit) * weights)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    return loss_sum, correct, jnp.sum(weights)


# A loss: (model, params, batch) -> (the loss summed over the batch, per-token metrics summed over the batch, with
# "target_tokens" among them: the number of target tokens, each counted with its example's weight). The step divides
# the loss, its gradient and every other metric by the batch's target_tokens; sums, not means, so gradient
# accumulation over microbatches equals one big batch.
LossFn = Callable[[Transformer, Any, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def cross_entropy_loss(model: Transformer, params: Any, batch: dict[str, jax.Array]
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The default `LossFn`: target-token cross entropy (`target_token_stats`) of a packed batch."""
    logits = model.apply({"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"])
    loss_sum, correct, count = target_token_stats(logits, batch)
    return loss_sum, {"accuracy": correct, "target_tokens": count}


# --- partitioned state and step ---------------------------------------------------------------------------------

def training_model_config(config: TrainConfig, model_cfg: TransformerConfig) -> TransformerConfig:
    return model_cfg.replace(param_dtype=jnp.float32, **({"dtype": config.dtype} if config.dtype is not None else {}))


def state_axes_and_abstract(model_cfg: TransformerConfig, optimizer: optax.GradientTransformation,
                            params_layout: Parameterization = FullFineTuning()) -> tuple[TrainState, TrainState]:
    """(logical axes, ShapeDtypeStructs) of the train state, computed without allocating."""
    params = params_layout.abstract(model_cfg)
    params_axes = params_layout.logical_axes(model_cfg)
    mask = trainable_mask(params_layout, params)
    trainable, trainable_axes = select(params, mask, True), select(params_axes, mask, True)
    opt_state = jax.eval_shape(optimizer.init, trainable)
    axes = TrainState(step=(), params=params_axes,
                      opt_state=optimizer_state_axes(opt_state, trainable, trainable_axes))
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state)
    return axes, abstract


def _summed_gradients(grad_fn: Callable, params: Any, batch: dict[str, jax.Array], num_microbatches: int
                      ) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """(gradient of the loss sum, loss sum, summed metrics) of the batch, over `num_microbatches` sequential parts."""
    if num_microbatches == 1:
        (loss_sum, sums), grads = grad_fn(params, batch)
        return grads, loss_sum, sums
    # Row i goes to microbatch i % M: every device's rows feed every microbatch (no resharding).
    micro = jax.tree.map(lambda x: x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
                         .swapaxes(0, 1), batch)  # [M, batch / M, length]
    (loss_shape, sums_shape), grads_shape = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (grads_shape, loss_shape, sums_shape))

    def accumulate(carry: Any, mb: dict[str, jax.Array]) -> tuple[Any, None]:
        (loss_sum, sums), grads = grad_fn(params, mb)
        return jax.tree.map(jnp.add, carry, (grads, loss_sum, sums)), None

    (grads, loss_sum, sums), _ = jax.lax.scan(accumulate, zeros, micro)
    return grads, loss_sum, sums


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A partitioned, jitted `train_step(state, batch) -> (state, metrics)`, with the state's layout."""

    fn: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]
    shardings: TrainState  # NamedSharding per state leaf
    abstract: TrainState  # ShapeDtypeStruct per state leaf
    batch_sharding: jax.sharding.NamedSharding
    params_layout: Parameterization

    def __call__(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        return self.fn(state, batch)


@functools.lru_cache(maxsize=16)
def make_train_step(model_cfg: TransformerConfig, opt_cfg: OptimizerConfig, num_microbatches: int,
                    mesh: jax.sharding.Mesh, batch_shape: tuple[int, int], loss_fn: LossFn = cross_entropy_loss,
                    params_layout: Parameterization = FullFineTuning()) -> TrainStep:
    """The train step for a model, optimizer, batch shape and parameterization (cached: repeated `train` calls reuse
    one compile). The loss sum and every summed metric are divided by the batch's "target_tokens"; only the
    trainable params get gradients and optimizer state."""
    optimizer = make_optimizer(opt_cfg)
    schedule = learning_rate_schedule(opt_cfg)
    axes, abstract = state_axes_and_abstract(model_cfg, optimizer, params_layout)
    state_shardings = tree_shardings(abstract, axes, mesh)
    batch_sharding = logical_sharding(BATCH_AXES, batch_shape, mesh)
    mask = trainable_mask(params_layout, abstract.params)
    model = Transformer(model_cfg)

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        trainable, frozen = select(state.params, mask, True), select(state.params, mask, False)

        def constrained_loss(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
            model_params = params_layout.model_params(combine(mask, params, frozen))
            return loss_fn(model, model_params, {k: constrain(v, BATCH_AXES) for k, v in batch.items()})

        grad_fn = jax.value_and_grad(constrained_loss, has_aux=True)
        with activation_sharding(mesh):
            grads, loss_sum, sums = _summed_gradients(grad_fn, trainable, batch, num_microbatches)
        count = sums["target_tokens"]  # weighted when examples carry weights, so it can be below 1
        denom = jnp.where(count > 0, count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        metrics = {"loss": loss_sum / denom, **{k: v / denom for k, v in sums.items() if k != "target_tokens"},
                   "target_tokens": sums["target_tokens"], "grad_norm": global_norm(grads),
                   "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
        params = combine(mask, optax.apply_updates(trainable, updates), frozen)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # One sharding for every batch feature (a prefix of the batch dict): batches with or without loss_weights.
    jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    return TrainStep(jitted, state_shardings, abstract, batch_sharding, params_layout)


def initial_state(model_params: Any, opt_cfg: OptimizerConfig, shardings: TrainState,
                  params_layout: Parameterization = FullFineTuning()) -> TrainState:
    """The step-0 state: `params_layout`'s params over `model_params` on the mesh, optimizer state of the
    trainable ones."""
    # Leaf by leaf onto the mesh, so a large model never sits whole on one device on its way there.
    params = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32), s),
                          params_layout.init(model_params), shardings.params)
    trainable = select(params, trainable_mask(params_layout, params), True)
    opt_state = jax.jit(make_optimizer(opt_cfg).init, out_shardings=shardings.opt_state)(trainable)
    return TrainState(step=jax.device_put(jnp.int32(0), shardings.step), params=params, opt_state=opt_state)


# --- metrics ----------------------------------------------------------------------------------------------------

class MetricsLogger:
    """The train loop's metrics: `record` keeps each step's device arrays (fetched in groups, so the host does not
    wait on every step); `flush` fetches them, stops on a non-finite loss or gradient norm, adds throughput and MFU,
    and writes metrics.jsonl (always) and clu's default writer (TensorBoard where available). Every process computes
    the same global metrics; process 0 writes them."""

    def __init__(self, output_dir: pathlib.Path, start_step: int, config: TrainConfig, flops_per_slot: float,
                 checkpoint_dir: pathlib.Path, last_checkpoint: int | None):
        self.path = output_dir / "metrics.jsonl"
        self.config, self.flops_per_slot = config, flops_per_slot
        self.checkpoint_dir, self.last_checkpoint = checkpoint_dir, last_checkpoint
        self.history: list[dict[str, float]] = []
        self._pending: list[tuple[int, dict[str, jax.Array], int | None]] = []
        self._clock = time.perf_counter()
        self.enabled = jax.process_index() == 0
        self.writer = self._open(output_dir, start_step) if self.enabled else None

    def _open(self, output_dir: pathlib.Path, start_step: int) -> Any:
        self._lines: list[str] = []  # the log so far: an object store cannot append, so there it is rewritten whole
        if self.path.exists():  # a resumed run rewrites what came after its checkpoint, as an uninterrupted run would
            self._lines = [line for line in complete_lines(self.path) if json.loads(line)["step"] <= start_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in self._lines))
        try:
            from clu import metric_writers  # noqa: PLC0415

            return metric_writers.create_default_writer(str(output_dir / "tensorboard"), asynchronous=False)
        except Exception as err:  # noqa: BLE001 - TensorBoard support is optional
            log.warning("No clu metric writer (%s); writing metrics.jsonl only.", err)
            return None

    def record(self, step: int, metrics: dict[str, jax.Array], target_tokens: int | None) -> None:
        """Step `step`'s metrics; `target_tokens` None marks the step that included the compile, which is waited
        for and kept out of the throughput figures."""
        if target_tokens is None:
            jax.block_until_ready(metrics)
            now = time.perf_counter()
            log.info("First step (with compile) took %.1f s.", now - self._clock)
            self._clock = now
        self._pending.append((step, metrics, target_tokens))

    def checkpointed(self, step: int) -> None:
        self.last_checkpoint = step

    def flush(self) -> dict[str, float] | None:
        """Writes the newest recorded step's metrics (with throughput over all steps since the last flush)."""
        if not self._pending:
            return None
        fetched = jax.device_get([m for _, m, _ in self._pending])
        now = time.perf_counter()
        elapsed, self._clock = now - self._clock, now
        for (step, _, _), values in zip(self._pending, fetched):
            if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
                raise NonFiniteLossError(
                    f"Non-finite loss ({values['loss']}) or grad norm ({values['grad_norm']}) at step {step}; "
                    f"stopped. The last good checkpoint is step {self.last_checkpoint} in {self.checkpoint_dir}.")
        timed = [t for _, _, t in self._pending if t is not None]
        step, values = self._pending[-1][0], {k: float(v) for k, v in fetched[-1].items()}
        if timed:
            slots_per_s = len(timed) * self.config.batch_size * self.config.seq_length / elapsed
            values.update(tokens_per_s=sum(timed) / elapsed, slots_per_s=slots_per_s,
                          steps_per_s=len(timed) / elapsed)
            if self.config.peak_flops_per_s:
                values["mfu"] = self.flops_per_slot * slots_per_s / self.config.peak_flops_per_s
        self._write(step, values)
        self.history.append({"step": step, **values})
        self._pending.clear()
        return values

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._lines.append(json.dumps({"step": step, **scalars}))
        if is_local(self.path):
            with open(self.path, "a") as f:
                f.write(self._lines[-1] + "\n")
        else:  # one object per write (atomic there); the log is short: a line per log_every steps
            write_text_atomic(self.path, "".join(line + "\n" for line in self._lines))
        if self.writer is not None:
            self.writer.write_scalars(step, scalars)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def complete_lines(path: pathlib.Path) -> list[str]:
    """The JSON lines of an appended log (metrics.jsonl); a last line cut short by a kill mid-append is dropped."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return lines


# --- the loop ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainSummary:
    start_step: int
    end_step: int
    restored_from: int | None
    history: list[dict[str, float]]


def _host_params(init_params_or_checkpoint: Any, model_cfg: TransformerConfig) -> Any:
    if isinstance(init_params_or_checkpoint, (str, os.PathLike)):
        from lsi.checkpoints import load_checkpoint  # noqa: PLC0415

        cfg, params = load_checkpoint(init_params_or_checkpoint)
        if (cfg.num_layers, cfg.embed_dim, cfg.vocab_size) != (model_cfg.num_layers, model_cfg.embed_dim,
                                                               model_cfg.vocab_size):
            raise ValueError(f"Checkpoint {init_params_or_checkpoint} does not match the model config.")
        return params
    return init_params_or_checkpoint


def _device_batch(host_batch: dict[str, np.ndarray], batch_shape: tuple[int, int],
                  sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    out = {}
    for k in [k for k in FEATURES if k in host_batch]:
        x = np.asarray(host_batch[k], FEATURE_DTYPES[k])
        if jax.process_count() > 1:  # each host feeds its own rows of the global batch
            out[k] = jax.make_array_from_process_local_data(sharding, x, batch_shape)
            continue
        if x.shape != batch_shape:
            raise ValueError(f"Batch feature {k!r} has shape {x.shape}; the train config expects {batch_shape} "
                             f"(batch_size, seq_length).")
        out[k] = jax.device_put(x, sharding)
    return out


def restore_or_init(checkpointer: Checkpointer, train_step: TrainStep, init_params_or_checkpoint: Any,
                    config: TrainConfig, model_cfg: TransformerConfig, data: Any) -> tuple[TrainState, int | None]:
    """(state, step restored from): the newest restorable checkpoint with the data stream set back to its position,
    else a fresh state from `init_params_or_checkpoint` (None)."""
    if not hasattr(data, "get_state"):
        log.warning("The data iterator has no get_state/set_state: a resumed run will not continue its stream.")
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), train_step.abstract,
                            train_step.shardings)
    restored = checkpointer.restore_latest(abstract)
    if restored is None:
        return initial_state(_host_params(init_params_or_checkpoint, model_cfg), config.optimizer,
                             train_step.shardings, train_step.params_layout), None
    step, state, data_state = restored
    if hasattr(data, "set_state"):
        data.set_state(data_state)
    log.info("Resumed from step %d of %s.", step, checkpointer.directory)
    return state, step


def _record_data_stats(data: Any, output_dir: pathlib.Path) -> None:
    if isinstance(getattr(data, "stats", None), PackingStats):
        log.info("Training data: %s", data.stats)
        if jax.process_index() == 0:
            write_json_atomic(output_dir / "data_stats.json", dataclasses.asdict(data.stats))


def train(config: TrainConfig, model_cfg: TransformerConfig, init_params_or_checkpoint: Any,
          data: Iterator[dict[str, np.ndarray]], output_dir: str | os.PathLike,
          mesh: jax.sharding.Mesh | None = None, loss_fn: LossFn = cross_entropy_loss
          ) -> tuple[TrainState, TrainSummary]:
    """Trains to `config.steps`, resuming from the newest restorable checkpoint in `output_dir/checkpoints`.

    `init_params_or_checkpoint`: a parameter tree, or a checkpoint path/name for `lsi.checkpoints.load_checkpoint`
    (only read when there is nothing to resume). `data` yields batches of `lsi.training.data` features; its
    position is checkpointed when it has `get_state`/`set_state` (`PackedBatches` does).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    output_dir = as_path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = training_model_config(config, model_cfg)
    mesh = make_mesh(MeshConfig(*config.mesh)) if mesh is None else mesh
    batch_shape = (config.batch_size, config.seq_length)
    train_step = make_train_step(model_cfg, config.optimizer, config.num_microbatches, mesh, batch_shape, loss_fn,
                                 parameterization(config))
    checkpointer = Checkpointer(output_dir / "checkpoints", keep=config.keep_checkpoints)
    state, restored_from = restore_or_init(checkpointer, train_step, init_params_or_checkpoint, config, model_cfg,
                                           data)
    start = int(state.step)
    _record_data_stats(data, output_dir)
    logger = MetricsLogger(output_dir, start, config, model_cfg.flops_per_token(config.seq_length),
                           checkpointer.directory, restored_from)
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress_bar, desc="train")
    try:
        for step in range(start, config.steps):
            host_batch = next(data)
            state, metrics = train_step(state, _device_batch(host_batch, batch_shape, train_step.batch_sharding))
            done = step + 1
            logger.record(done, metrics, None if step == start else int(np.count_nonzero(host_batch["segment_ids"])))
            save = done % config.checkpoint_every == 0 or done == config.steps
            if (save or done % config.log_every == 0) and (latest := logger.flush()) is not None:
                bar.set_postfix(loss=f"{latest['loss']:.4f}")
            if save:
                checkpointer.save(done, state, data.get_state() if hasattr(data, "get_state") else {})
                logger.checkpointed(done)
            bar.update(1)
        logger.flush()
    finally:
        bar.close()
        logger.close()
        checkpointer.close()
    return state, TrainSummary(start, int(state.step), restored_from, logger.history)


def export_hf(model_cfg: TransformerConfig, params: Any, directory: str | os.PathLike, vocabulary: Any = None,
              stop_ids: Sequence[int] = (), dtype: str = "float32") -> epath.Path:
    """Fine-tuned params (any placement) -> a HF directory (config.json, model.safetensors in `dtype`, and with a
    `vocabulary` its tokenizer files, chat template included, and generation_config.json stopping on `stop_ids`,
    default the vocabulary's EOS).

    With several processes every process must call this (gathering sharded params is collective); process 0
    writes the directory, and all return once it is complete."""
    from lsi.checkpoints import save_hf_directory, write_generation_config  # noqa: PLC0415

    directory = as_path(directory)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        # safetensors and tokenizers write local files only: an object-store directory is written locally first.
        with contextlib.ExitStack() as stack:
            local = (pathlib.Path(directory) if is_local(directory)
                     else pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lsi-hf-export-"))))
            save_hf_directory(model_cfg.replace(dtype=jnp.float32), params, local, dtype)
            if vocabulary is not None:
                vocabulary.save(local)
                eos = [vocabulary.eos_id] if vocabulary.eos_id is not None else []
                write_generation_config(local, bos_id=vocabulary.bos_id, stop_ids=list(stop_ids) or eos,
                                        pad_id=getattr(vocabulary, "model_pad_id", None))
            if not is_local(directory):
                upload_tree(local, directory)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"export {directory}")
    return directory


def finetune(config: TrainConfig, checkpoint: str | os.PathLike, task: str, output_dir: str | os.PathLike,
             vocabulary: Any = None, export: bool = True, mesh: jax.sharding.Mesh | None = None,
             stop_ids: Sequence[int] = ()) -> dict[str, Any]:
    """The LMSI fine-tuning stage: a checkpoint and a SeqIO task/mixture of "inputs"/"targets" text -> a trained
    run in `output_dir` (checkpoints, metrics.jsonl, data_stats.json) and, with `export`, a HF directory at
    `output_dir/hf` (with the tokenizer when `vocabulary` is given, and a generation config stopping on `stop_ids`).
    `mesh` defaults to `config.mesh`'s shape. Rerunning the same call resumes. For a mixture, the result's "data"
    has "mixture": `PackedBatches.mixture_record()` after training."""
    from lsi.checkpoints import load_checkpoint  # noqa: PLC0415
    from lsi.training.data import PackedBatches  # noqa: PLC0415

    model_cfg, params = load_checkpoint(checkpoint)
    data = PackedBatches(task, batch_size=config.batch_size, seq_length=config.seq_length, seed=config.seed)
    state, summary = train(config, model_cfg, params, data, output_dir, mesh=mesh)
    result: dict[str, Any] = {"steps": summary.end_step, "resumed_from": summary.restored_from,
                              "data": dataclasses.asdict(data.stats),
                              "final_metrics": summary.history[-1] if summary.history else None}
    if (mixture := data.mixture_record()) is not None:  # the rates used, and what each task gave the batches trained
        result["data"]["mixture"] = mixture
    if export:
        model_params = parameterization(config).model_params(state.params)  # LoRA: the merged kernels
        result["hf_directory"] = str(export_hf(model_cfg, model_params, as_path(output_dir) / "hf", vocabulary,
                                               stop_ids, config.export_dtype))
    return result
