"""One training loop for every model family.

The family supplies a `Model` (see `protjax.models.registry`): variables from
batch shapes, `loss_fn(params, batch, dropout_rng) -> (loss, metrics)` and its
FLOPs. Everything else is shared:

* `make_train_step`: a pure `train_step(state, batch) -> (state, metrics)`;
  the dropout RNG is `fold_in(state.rng, state.step)` (so a resumed run draws
  the same masks), gradients are accumulated over micro-batches with
  `lax.scan`, then one optimiser update.
* `train`: builds the mesh and shardings (`protjax.partitioning`), creates the
  parameters and optimiser state directly sharded (a jitted init with
  out_shardings), restores the latest checkpoint in `model_dir` if there is one
  (params, optimiser state, step, RNG; the data source is restarted at the
  restored step), runs the jitted step, logs one console line and TensorBoard
  scalars per `log_every` steps (process 0 only), evaluates periodically,
  checkpoints every N steps, stops cleanly on SIGTERM and loudly on a
  non-finite loss.

A family may keep a recurrent state (ProtTXL's memory): its Model then has
`init_model_state(batch_shapes)` (the state for the global batch, leaves
`[batch, ...]`), `model_state_axes()` (their logical axes, PartitionSpecs of
names) and `loss_fn(params, batch, rng, model_state=s) -> (loss, (metrics,
new_s))`. The state lives in `TrainState.model_state`, is split into
micro-batches with the batch's rows and checkpointed beside the params, so a
killed and resumed run is bitwise the uninterrupted one. Without those
methods `model_state` is None and nothing else changes.

A data source is any callable `source(start_step, shard_index, num_shards)`
returning an iterator of this host's share of each global batch (dicts of
numpy arrays `[batch // num_shards, length]`), where the batch for step s
depends only on the source's seed and s.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from protjax import checkpoints as checkpoints_lib
from protjax import files
from protjax import optim
from protjax import partitioning as partitioning_lib
from protjax.errors import InputError
from protjax.models import registry

Batch = Mapping[str, Any]
Metrics = dict[str, Any]


class Model(Protocol):
  """What the trainer needs from a model family (see models/registry.py)."""
  config: Any

  def init_variables(self, rng: jax.Array,
                     batch_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """Variables with 'params' and 'params_axes' for batches of these shapes."""

  def loss_fn(self, params: Any, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> tuple[jax.Array, Metrics]:
    """Scalar loss and scalar metrics (incl. `num_tokens` for weighting)."""

  def flops_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]
                        ) -> float:
    """Training FLOPs (forward + backward) per example."""

  def tokens_per_example(self, batch_shapes: Mapping[str, tuple[int, ...]]
                         ) -> int:
    """Tokens per example, for the tokens/s figure."""


DataSource = Callable[[int, int, int], Iterator[dict]]


@dataclasses.dataclass(frozen=True)
class PipelineSource:
  """A DataSource over `protjax.data.pipeline.DataConfig` (gin-bound).

  `data.batch_size` is the GLOBAL batch; each of `num_shards` hosts reads
  `batch_size / num_shards` rows from its own shard of the corpus (seqio
  ShardInfo). The batch for step s depends only on (data.seed, s, shard).

  Attributes:
    data: a DataConfig (task, length, batch size, seed, packing, files).
    split: "train" or "validation".
    repeat: loop over the split forever. Kept on for evaluation too: every
      host must produce `eval_steps` batches (a host whose shard ran out
      would leave the others waiting in a collective), and each evaluation
      then sees the same batches, so evaluations are comparable.
  """
  data: Any
  split: str = "train"
  repeat: bool = True

  @property
  def seed(self) -> int:
    return self.data.seed

  def __call__(self, start_step: int, shard_index: int, num_shards: int
               ) -> Iterator[dict]:
    if self.data.batch_size % num_shards:
      raise InputError(f"batch_size {self.data.batch_size} is not divisible "
                       f"by the {num_shards} hosts")
    shard_info = None
    if num_shards > 1:
      from protjax.data.config import ShardInfo  # pylint: disable=import-outside-toplevel
      shard_info = ShardInfo(index=shard_index, num_shards=num_shards)
    return iter(self.data.get_dataset(
        self.split, start_step=start_step, shard_info=shard_info,
        repeat=self.repeat, batch_size=self.data.batch_size // num_shards))


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/inf; the run stopped."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and gets checkpointed).

  Attributes:
    step: int32 scalar, number of updates applied.
    params: parameter tree.
    opt_state: optimiser state tree.
    rng: base PRNG key (uint32 [2]); step s uses fold_in(rng, s).
    model_state: a stateful family's recurrent state (see the module
      docstring), None for the others.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any = None


# ----------------------------------------------------------------------------
# The step: small pure functions.
# ----------------------------------------------------------------------------

def split_microbatches(batch: Batch, num_microbatches: int,
                       batch_spec: Any = None) -> Batch:
  """`[batch, ...]` -> `[num_microbatches, batch // num_microbatches, ...]`.

  Example i goes to micro-batch i % num_microbatches, so each micro-batch
  keeps the batch's sharding over `data` (every device holds a slice of every
  micro-batch) instead of living on a subset of the devices.
  """
  return _split_rows(dict(batch), num_microbatches, batch_spec)


def _split_rows(tree: Any, num_microbatches: int, batch_spec: Any = None) -> Any:
  """`split_microbatches` for any pytree of `[batch, ...]` arrays."""
  def one(x):
    b = x.shape[0]
    if b % num_microbatches:
      raise ValueError(f"batch {b} not divisible into {num_microbatches} "
                       f"micro-batches")
    x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)  # [b/n, n, ...] -> [n, b/n, ...]
    if batch_spec is not None:
      x = jax.lax.with_sharding_constraint(
          x, jax.sharding.PartitionSpec(None, *batch_spec))
    return x
  return jax.tree.map(one, tree)


def _merge_rows(tree: Any) -> Any:
  """The inverse of `_split_rows`: `[n, batch / n, ...]` -> `[batch, ...]`."""
  def one(x):
    x = jnp.swapaxes(x, 0, 1)  # [n, b/n, ...] -> [b/n, n, ...]
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(one, tree)


def _weight(metrics: Metrics) -> jax.Array:
  return jnp.asarray(metrics.get("num_tokens", 1.0), jnp.float32)


def _stateful_loss(loss_fn):
  """A stateful family's loss as `(params, (batch, state), rng) -> (loss, (metrics, state'))`."""
  return lambda params, inputs, rng: loss_fn(params, inputs[0], rng,
                                             model_state=inputs[1])


def accumulate_gradients(loss_fn, params: Any, batch: Batch,
                         rng: Optional[jax.Array], num_microbatches: int,
                         batch_spec: Any = None, model_state: Any = None):
  """Gradients of the token-weighted mean loss over the whole batch.

  Each micro-batch's loss is a token-weighted mean, so its gradient is
  re-weighted by its `num_tokens` before summing: the result equals the
  full-batch gradient (up to float rounding). Metrics are averaged with the
  same weights; `num_tokens` is summed.

  Returns (grads, metrics); with a `model_state` (a stateful family, see
  the module docstring) (grads, metrics, new model_state), each micro-batch
  running on its own rows of the state.
  """
  stateful = model_state is not None
  if stateful:
    loss_fn, batch = _stateful_loss(loss_fn), (dict(batch), model_state)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def split_aux(aux):  # -> (metrics, new state or None)
    return aux if stateful else (aux, None)

  if num_microbatches <= 1:
    (_, aux), grads = grad_fn(params, batch, rng)
    metrics, new_state = split_aux(aux)
    return (grads, metrics, new_state) if stateful else (grads, metrics)

  micro = (_split_rows(batch, num_microbatches, batch_spec) if stateful
           else split_microbatches(batch, num_microbatches, batch_spec))

  def body(carry, inputs):
    grad_sum, metric_sum, weight_sum = carry
    index, mb = inputs
    mb_rng = None if rng is None else jax.random.fold_in(rng, index)
    (_, aux), grads = grad_fn(params, mb, mb_rng)
    metrics, new_state = split_aux(aux)
    w = _weight(metrics)
    grad_sum = jax.tree.map(lambda a, g: a + w * g, grad_sum, grads)
    metric_sum = jax.tree.map(lambda a, m: a + w * m, metric_sum, metrics)
    return (grad_sum, metric_sum, weight_sum + w), new_state

  first = jax.tree.map(lambda x: x[0], micro)
  metrics_shape, _ = split_aux(jax.eval_shape(loss_fn, params, first, rng)[1])
  zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), t)
  init = (zeros(params), zeros(metrics_shape), jnp.zeros((), jnp.float32))
  (grad_sum, metric_sum, weight_sum), states = jax.lax.scan(
      body, init, (jnp.arange(num_microbatches), micro))
  grads = jax.tree.map(lambda g, p: (g / weight_sum).astype(p.dtype),
                       grad_sum, params)
  metrics = {k: v / weight_sum for k, v in metric_sum.items()}
  if "num_tokens" in metrics:
    metrics["num_tokens"] = weight_sum
  return (grads, metrics, _merge_rows(states)) if stateful else (grads, metrics)


def make_train_step(loss_fn, optimizer: optim.Optimizer,
                    num_microbatches: int = 1, batch_spec: Any = None,
                    dropout: bool = True):
  """Returns the pure `train_step(state, batch) -> (state, metrics)`."""

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step) if dropout else None
    model_state = state.model_state
    if model_state is None:
      grads, metrics = accumulate_gradients(loss_fn, state.params, batch, rng,
                                            num_microbatches, batch_spec)
    else:
      grads, metrics, model_state = accumulate_gradients(
          loss_fn, state.params, batch, rng, num_microbatches, batch_spec,
          model_state)
    updates, opt_state = optimizer.tx.update(grads, state.opt_state,
                                             state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                   learning_rate=optimizer.schedule(state.step))
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state, model_state=model_state), metrics

  return train_step


def make_eval_step(loss_fn):
  """`eval_step(params, batch) -> metrics`, deterministic (no dropout)."""
  def eval_step(params, batch):
    _, metrics = loss_fn(params, batch, None)
    return metrics
  return eval_step


# ----------------------------------------------------------------------------
# Host side: distributed set-up, summaries, throughput.
# ----------------------------------------------------------------------------

def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           cpu_collectives: str = "gloo") -> bool:
  """Calls `jax.distributed.initialize` when the run spans several processes.

  Explicit arguments (GPU clusters without a scheduler jax knows) win; else
  the environment decides: `JAX_COORDINATOR_ADDRESS`, a multi-worker TPU VM
  pod (`TPU_WORKER_HOSTNAMES` with several hosts), SLURM or Open MPI with
  more than one task. Returns whether it initialised.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(
      "JAX_COORDINATOR_ADDRESS")
  multi_env = (
      "," in env.get("TPU_WORKER_HOSTNAMES", "")
      or int(env.get("SLURM_NTASKS", "1") or 1) > 1
      or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1)
  if not coordinator_address and not multi_env:
    return False
  if env.get("JAX_PLATFORMS", "") == "cpu":
    # The CPU backend needs a collectives implementation across processes.
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


# Dense bf16 peak FLOP/s of one jax device (a TPU v2/v3 device is one core).
PEAK_FLOPS = {
    "TPU v2": 22.5e12, "TPU v3": 61.5e12, "TPU v4": 275e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA V100": 125e12,
}


def peak_flops_per_device(device: Optional[jax.Device] = None
                          ) -> Optional[float]:
  """Peak FLOP/s of a device from its kind (longest matching prefix)."""
  kind = (device or jax.devices()[0]).device_kind
  best = None
  for prefix, value in PEAK_FLOPS.items():
    if kind.startswith(prefix) and (best is None or len(prefix) > best[0]):
      best = (len(prefix), value)
  return None if best is None else best[1]


class SummaryWriter:
  """TensorBoard scalars in an event file, written without TensorFlow.

  (tensorboard's own EventFileWriter imports TensorFlow when it is installed,
  which costs seconds per process; the record format is small enough to
  write directly.)
  """

  def __init__(self, logdir: str | os.PathLike):
    import socket
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    files.makedirs(logdir)  # local or gs:// (files.py)
    self.path = files.join(logdir, f"events.out.tfevents.{time.time():.6f}."
                           f"{socket.gethostname()}.{os.getpid()}")
    self._records = RecordWriter(files.open_file(self.path, "wb"))
    self._records.write(event_pb2.Event(
        wall_time=time.time(), file_version="brain.Event:2"
    ).SerializeToString())

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in values.items()])
    self._records.write(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        summary=summary).SerializeToString())
    self._records.flush()

  def close(self) -> None:
    self._records.close()


@dataclasses.dataclass
class RunLog:
  """A run's TensorBoard scalars, over every invocation that logged to it.

  A run that is stopped (SIGTERM, a wall-clock budget, a killed session) and
  started again resumes from its last checkpoint, and `TrainResult` covers
  that last invocation only; the event files (one per invocation) cover all.

  Attributes:
    scalars: tag -> step -> value. An invocation killed between checkpoints
      may have logged steps that its successor trains and logs again: the
      later value is kept (resumption is deterministic, so they agree).
    invocation_seconds: per event file, oldest first, the seconds from
      opening it (after the model is built or restored) to its last event.
  """
  scalars: dict[str, dict[int, float]]
  invocation_seconds: list[float]

  @property
  def start_step(self) -> Optional[int]:
    """The step the first invocation started from (every invocation logs its
    first step), or None when no training step was logged."""
    steps = [s for tag, by_step in self.scalars.items()
             if tag.startswith("train/") for s in by_step]
    return min(steps) - 1 if steps else None


def read_run_log(logdir: str | os.PathLike) -> RunLog:
  """Reads the event files `SummaryWriter` wrote in `logdir` (no TensorFlow).

  A record cut short by a killed process ends that file's reading.
  """
  import struct
  from tensorboard.compat.proto import event_pb2
  files_read = []
  for path in files.glob(files.join(logdir, "events.out.tfevents.*")):
    with files.open_file(path, "rb") as f:
      data = f.read()
    events, pos = [], 0
    while pos + 12 <= len(data):  # u64 length, u32 crc, data, u32 crc
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      end = pos + 12 + length
      if end + 4 > len(data):
        break
      events.append(event_pb2.Event.FromString(data[pos + 12:end]))
      pos = end + 4
    if events:
      files_read.append(events)
  files_read.sort(key=lambda events: events[0].wall_time)
  scalars: dict[str, dict[int, float]] = {}
  for events in files_read:
    for event in events:
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[int(event.step)] = value.simple_value
  return RunLog(scalars=scalars, invocation_seconds=[
      events[-1].wall_time - events[0].wall_time for events in files_read])


def format_progress(step: int, train_steps: int, m: Mapping[str, float]
                    ) -> str:
  """The one-line console report."""
  def f(key, fmt, scale=1.0):
    v = m.get(key)
    return "n/a" if v is None or not math.isfinite(v) else fmt.format(v * scale)
  return (f"step {step}/{train_steps}  loss {f('loss', '{:.4f}')}  "
          f"masked_acc {f('masked_residue_accuracy', '{:.3f}')}  "
          f"lr {f('learning_rate', '{:.3g}')}  "
          f"grad_norm {f('grad_norm', '{:.3g}')}  "
          f"{f('examples_per_s', '{:.1f}')} ex/s  "
          f"{f('tokens_per_s', '{:.0f}')} tok/s  "
          f"{f('step_time', '{:.1f}', 1e3)} ms/step  "
          f"MFU {f('mfu', '{:.1f}%', 100)}")


def _to_global(batch: Mapping[str, np.ndarray], sharding) -> dict:
  """This host's rows of the global batch -> global jax arrays."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


class _MetricAverager:
  """Host-side running sums of per-step metrics between two log lines."""

  def __init__(self):
    self.sums: dict[str, float] = {}
    self.count = 0

  def add(self, metrics: Mapping[str, float]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.count += 1

  def mean(self) -> dict[str, float]:
    return {k: v / max(self.count, 1) for k, v in self.sums.items()}


@dataclasses.dataclass
class TrainResult:
  """What `train` returns (for tests and notebooks).

  Attributes:
    step: the step reached (== train_steps unless stopped).
    state: final TrainState (device arrays).
    history: per-step host metrics, step -> {name: value}, this process only.
    eval_history: step -> averaged eval metrics.
    stopped: None, "preempted" when SIGTERM stopped the run, or "time_limit"
      when `max_minutes` did.
    start_step: the step the run started (or resumed) from.
  """
  step: int
  state: TrainState
  history: dict[int, dict[str, float]]
  eval_history: dict[int, dict[str, float]]
  stopped: Optional[str]
  start_step: int


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------

def _model_state_shardings(partitioner, model):
  """Shardings of a stateful family's state, from its logical axes (None: no state)."""
  if not hasattr(model, "init_model_state"):
    return None
  spec = jax.sharding.PartitionSpec
  return jax.tree.map(
      lambda names: partitioner.sharding(partitioning_lib.logical_to_mesh_axes(
          tuple(names), partitioner.rules)),
      model.model_state_axes(), is_leaf=lambda x: isinstance(x, spec))


def _state_shardings(partitioner, abstract_vars, optimizer, model=None):
  abstract_params = abstract_vars["params"]
  param_specs = partitioner.param_specs(abstract_params,
                                        abstract_vars["params_axes"])
  abstract_opt = jax.eval_shape(optimizer.tx.init, abstract_params)
  opt_specs = partitioner.derived_specs(abstract_opt, abstract_params,
                                        param_specs)
  to_sharding = lambda t: jax.tree.map(
      partitioner.sharding, t,
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  replicated = partitioner.replicated()
  return TrainState(step=replicated, params=to_sharding(param_specs),
                    opt_state=to_sharding(opt_specs), rng=replicated,
                    model_state=_model_state_shardings(partitioner, model))


def _abstract(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


def _in_context(partitioner, fn):
  """Runs (and therefore traces) `fn` with the mesh and rules in scope."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with partitioner.activation_context():
      return fn(*args, **kwargs)
  return wrapped


@dataclasses.dataclass
class TrainSetup:
  """The compiled pieces of a run on one mesh (no data, no files).

  Attributes:
    partitioner: mesh + rules.
    state_shardings: TrainState of NamedShardings.
    abstract_state: TrainState of ShapeDtypeStructs carrying those shardings.
    batch_sharding: sharding of every `[batch, ...]` input.
    init_state: () -> TrainState, created directly sharded (jit with
      out_shardings: no parameter is ever whole on one device).
    train_step: jitted (state, batch) -> (state, metrics); donates state.
    eval_step: jitted (params, batch) -> metrics.
  """
  partitioner: partitioning_lib.Partitioner
  state_shardings: TrainState
  abstract_state: TrainState
  batch_sharding: Any
  init_state: Callable[[], TrainState]
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]

  def to_global(self, local_batch: Mapping[str, np.ndarray]) -> dict:
    """This host's rows of the global batch -> sharded global arrays."""
    return _to_global(local_batch, self.batch_sharding)


def setup_training(model: Model, optimizer: optim.Optimizer,
                   partitioner: partitioning_lib.Partitioner,
                   batch_shapes: Mapping[str, tuple[int, ...]], *,
                   num_microbatches: int = 1, dropout: bool = True,
                   seed: int = 0) -> TrainSetup:
  """Shardings, sharded init and the jitted steps for one model + mesh."""
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  abstract_vars = _in_context(partitioner, jax.eval_shape)(
      lambda r: model.init_variables(r, batch_shapes), init_rng)
  state_shardings = _state_shardings(partitioner, abstract_vars, optimizer,
                                     model)

  def init_state(rng):
    params = model.init_variables(rng, batch_shapes)["params"]
    model_state = (model.init_model_state(batch_shapes)
                   if hasattr(model, "init_model_state") else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.tx.init(params), rng=dropout_rng,
                      model_state=model_state)

  abstract_state = _abstract(jax.eval_shape(init_state, init_rng),
                             state_shardings)
  batch_sharding = partitioner.batch_sharding()
  batch_shardings = {k: batch_sharding for k in batch_shapes}
  replicated = partitioner.replicated()
  jit_init = jax.jit(init_state, out_shardings=state_shardings)
  step_fn = make_train_step(model.loss_fn, optimizer, num_microbatches,
                            tuple(partitioner.batch_spec()), dropout)
  jit_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                     out_shardings=(state_shardings, replicated),
                     donate_argnums=(0,))
  jit_eval = jax.jit(make_eval_step(model.loss_fn),
                     in_shardings=(state_shardings.params, batch_shardings),
                     out_shardings=replicated)
  return TrainSetup(
      partitioner=partitioner, state_shardings=state_shardings,
      abstract_state=abstract_state, batch_sharding=batch_sharding,
      init_state=_in_context(partitioner, lambda: jit_init(init_rng)),
      train_step=_in_context(partitioner, jit_step),
      eval_step=_in_context(partitioner, jit_eval))


def restore_state(ckpt: checkpoints_lib.Checkpointer, setup: TrainSetup,
                  step: Optional[int] = None, set_aside: bool = False
                  ) -> tuple[TrainState, dict]:
  """Restores a checkpoint onto this setup's mesh (any mesh it was saved on):
  `step`, or else the newest one that restores (`Checkpointer.restore_newest`;
  `set_aside` moves newer unreadable ones aside)."""
  abstract = setup.abstract_state
  if step is None:
    _, params, opt_state, meta = ckpt.restore_newest(
        abstract.params, abstract.opt_state, set_aside=set_aside,
        abstract_model_state=abstract.model_state)
  else:
    params, opt_state, meta = ckpt.restore(
        abstract.params, abstract.opt_state, step,
        abstract_model_state=abstract.model_state)
  model_state = None
  if abstract.model_state is not None:
    model_state = meta.pop(checkpoints_lib.MODEL_STATE)
  shardings = setup.state_shardings
  state = TrainState(
      step=jax.device_put(jnp.asarray(meta["step"], jnp.int32),
                          shardings.step),
      params=params, opt_state=opt_state,
      rng=jax.device_put(jnp.asarray(meta["rng"], jnp.uint32), shardings.rng),
      model_state=model_state)
  return state, meta


def _write_run_files(model_dir: str, model: Model,
                     config_str: Optional[str]) -> None:
  """model_dir/config.gin (resolved gin) and model_config.json (the config)."""
  files.makedirs(model_dir)
  if config_str is not None:
    files.write_text_atomic(files.join(model_dir, "config.gin"), config_str)
  if dataclasses.is_dataclass(getattr(model, "config", None)):
    config = dataclasses.asdict(model.config)
    if getattr(model, "family", None):
      config["family"] = model.family
    files.write_text_atomic(files.join(model_dir, "model_config.json"), json.dumps(
        config, indent=2, sort_keys=True) + "\n")


def _newest_meta(ckpt: checkpoints_lib.Checkpointer) -> dict:
  """The metadata of the newest step whose metadata reads ({"step": 0} when
  none does: the restore then says why)."""
  for step in sorted(ckpt.all_steps(), reverse=True):
    try:
      return ckpt.read_meta(step)
    except Exception:  # pylint: disable=broad-except
      continue  # orbax's errors vary; restore_newest names the step
  return {"step": 0}


def _resume_point(ckpt: checkpoints_lib.Checkpointer, init_from: Optional[str]):
  """Where the state comes from: (checkpointer or None, start step, data
  offset), as the newest step's metadata says (the restore may fall back
  to an older step if the newest does not read).

  This run's latest checkpoint, else (stage 2 of a two-stage pretraining)
  the latest of `init_from`, else nothing (fresh init). The data source is
  indexed by `step - data_offset`: a continued run's new corpus starts at its
  own batch 0 at the inherited step.
  """
  if ckpt.all_steps():
    meta = _newest_meta(ckpt)
    return ckpt, meta["step"], meta.get("data_offset", 0)
  if init_from:
    source = checkpoints_lib.Checkpointer(init_from, read_only=True)
    if not source.all_steps():
      raise InputError("no complete checkpoint to initialise from",
                       path=str(source.directory))
    inherited = _newest_meta(source)["step"]
    return source, inherited, inherited
  return None, 0, 0


def _data_offset(meta: dict, own: bool) -> int:
  """A restored checkpoint's data offset: its own, or (a checkpoint of the
  `init_from` run) its step, where this run's corpus starts."""
  return meta.get("data_offset", 0) if own else meta["step"]


def train(*,
          model_dir: str,
          model: Model,
          optimizer: optim.Optimizer,
          train_data: DataSource,
          train_steps: int,
          eval_data: Optional[DataSource] = None,
          eval_every: int = 0,
          eval_steps: int = 10,
          partitioner: Optional[partitioning_lib.Partitioner] = None,
          checkpoint: checkpoints_lib.CheckpointConfig = (
              checkpoints_lib.CheckpointConfig()),
          num_microbatches: int = 1,
          dropout: bool = True,
          log_every: int = 10,
          seed: int = 0,
          peak_flops: Optional[float] = None,
          init_from: Optional[str] = None,
          config_str: Optional[str] = None,
          max_minutes: Optional[float] = None,
          hooks: Sequence[Callable[[int], None]] = ()) -> TrainResult:
  """Trains `model` to `train_steps`, resuming from `model_dir` if possible.

  Args:
    model_dir: checkpoints, TensorBoard events, config.gin, model_config.json.
    model: the family's Model (models.registry.get_model).
    optimizer: an optim.Optimizer (e.g. optim.adafactor()).
    train_data: data source (see module docstring); its `seed` attribute, if
      any, is stored in checkpoints.
    train_steps: total number of steps (the run stops at this step).
    eval_data, eval_every, eval_steps: every `eval_every` steps (0: never)
      average the deterministic loss over `eval_steps` batches of eval_data.
    partitioner: mesh + rules; default make_partitioner() (data parallel
      over all devices, t5x standard rules).
    checkpoint: when to save and what to keep.
    num_microbatches: gradient accumulation steps within one update.
    dropout: pass a dropout RNG to the loss (False: deterministic training).
    log_every: steps per console line / TensorBoard point.
    seed: parameter-init and dropout seed.
    peak_flops: peak FLOP/s per device for MFU; default from the device kind
      (None on CPU: MFU not reported).
    init_from: a model_dir whose latest checkpoint (params, optimiser state,
      step: the schedule continues) starts this run when `model_dir` has none
      (ProtT5's second stage: UniRef50 from the BFD checkpoint). The data
      source starts at its batch 0 at that step.
    config_str: text written to model_dir/config.gin (the entry point passes
      gin's resolved config).
    max_minutes: wall-clock budget of this invocation: past it the run saves a
      checkpoint and stops as on SIGTERM (rerunning continues), e.g. a
      fixed-time benchmark or a job slot. None: no limit.
    hooks: called with the step number after each step (tests, profiling).
  """
  partitioner = partitioner or partitioning_lib.make_partitioner()
  model_dir = os.fspath(model_dir)  # a local path or gs:// (files.py)
  is_chief = jax.process_index() == 0
  new_run = not files.exists(model_dir)
  ckpt = checkpoints_lib.Checkpointer(model_dir, checkpoint)
  shard, num_shards = jax.process_index(), jax.process_count()
  try:
    source, start_step, data_offset = _resume_point(ckpt, init_from)
    # The data restarts exactly where the checkpoint left off; the first
    # batch also tells the shapes to build everything for.
    data_iter = iter(train_data(start_step - data_offset, shard, num_shards))
    first_batch = next(data_iter)
    batch_shapes = {k: (v.shape[0] * num_shards,) + tuple(v.shape[1:])
                    for k, v in first_batch.items()}
    global_batch = next(iter(batch_shapes.values()))[0]
    if global_batch % (partitioner.data_size * num_microbatches):
      raise InputError(f"global batch {global_batch} is not divisible by data "
                       f"parallelism {partitioner.data_size} x "
                       f"{num_microbatches} micro-batches")
  except InputError:
    # Bad data or settings: a run that never started leaves no folder behind.
    ckpt.close()
    if new_run and is_chief:
      files.rmtree(model_dir)
    raise
  if is_chief:
    _write_run_files(model_dir, model, config_str)

  setup = setup_training(model, optimizer, partitioner, batch_shapes,
                         num_microbatches=num_microbatches, dropout=dropout,
                         seed=seed)
  if source is None:
    state = setup.init_state()
  else:
    state, meta = restore_state(source, setup, set_aside=source is ckpt)
    if (meta["step"], _data_offset(meta, source is ckpt)) != (start_step, data_offset):
      # A newer step did not restore: the data restarts at the one that did.
      start_step, data_offset = meta["step"], _data_offset(meta, source is ckpt)
      data_iter = iter(train_data(start_step - data_offset, shard, num_shards))
      first_batch = next(data_iter)
    data_seed = getattr(train_data, "seed", None)
    if source is ckpt and meta.get("data_seed") != data_seed:
      logging.warning("checkpoint data seed %s != configured %s: the resumed "
                      "run sees different data", meta.get("data_seed"),
                      data_seed)
    logging.info("restored step %d from %s", meta["step"], source.directory)
    if source is not ckpt:
      source.close()
  start_step = int(jax.device_get(state.step))
  batch_sharding = setup.batch_sharding
  p_train_step, p_eval_step = setup.train_step, setup.eval_step

  flops_per_example = float(model.flops_per_example(batch_shapes))
  tokens_per_example = float(model.tokens_per_example(batch_shapes))
  peak = peak_flops if peak_flops is not None else peak_flops_per_device()
  writer = SummaryWriter(files.join(model_dir, "tensorboard")) if is_chief else None
  meta_base = {"data_seed": getattr(train_data, "seed", None),
               "data_offset": data_offset,
               "rng": [int(x) for x in np.asarray(jax.device_get(state.rng))]}

  def check_finite(step, metrics):
    bad = [k for k in ("loss", "grad_norm")
           if k in metrics and not math.isfinite(metrics[k])]
    if bad:
      ckpt.wait()
      good = ckpt.latest_step()
      raise NonFiniteLossError(
          f"non-finite {' and '.join(bad)} at step {step} "
          f"(loss={metrics.get('loss')}, grad_norm={metrics.get('grad_norm')})"
          f"; training stopped. The last good checkpoint is "
          f"{'step ' + str(good) if good is not None else 'none'} in "
          f"{ckpt.directory}; lower the learning rate or check the data.")

  def run_eval(params):
    sums, weight = {}, 0.0
    it = eval_data(0, shard, num_shards)
    for _, local in zip(range(eval_steps), it):
      m = jax.device_get(p_eval_step(params, _to_global(local, batch_sharding)))
      w = float(m.get("num_tokens", 1.0))
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + w * float(v)
      weight += w
    return {k: v / max(weight, 1e-9) for k, v in sums.items()}

  history: dict[int, dict[str, float]] = {}
  eval_history: dict[int, dict[str, float]] = {}
  averager = _MetricAverager()
  pending = None  # (step, device metrics) of the step dispatched last
  stopped = None
  step = start_step
  interval_start = time.perf_counter()
  interval_steps = 0

  def collect(pending_item):
    s, dev_metrics = pending_item
    host = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    check_finite(s, host)
    history[s] = host
    averager.add(host)
    return host

  def report(step):
    nonlocal averager, interval_start, interval_steps
    elapsed = time.perf_counter() - interval_start
    m = averager.mean()
    m["step_time"] = elapsed / max(interval_steps, 1)
    m["examples_per_s"] = global_batch * interval_steps / elapsed
    m["tokens_per_s"] = m["examples_per_s"] * tokens_per_example
    if peak:
      m["mfu"] = (m["examples_per_s"] * flops_per_example
                  / (peak * jax.device_count()))
    if is_chief:
      print(format_progress(step, train_steps, m), flush=True)
      writer.scalars(step, {f"train/{k}": v for k, v in m.items()})
    averager = _MetricAverager()
    interval_start, interval_steps = time.perf_counter(), 0

  def evaluate(step):
    em = run_eval(state.params)
    eval_history[step] = em
    if is_chief:
      print(f"eval step {step}: loss {em.get('loss', math.nan):.4f}  "
            f"masked_acc {em.get('masked_residue_accuracy', math.nan):.3f}",
            flush=True)
      writer.scalars(step, {f"eval/{k}": v for k, v in em.items()})

  last_saved = start_step if source is ckpt else None
  if start_step >= train_steps and is_chief:
    print(f"{model_dir} is already at step {start_step} (train_steps="
          f"{train_steps}): nothing to do", flush=True)
  deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
  timed_out = False
  with checkpoints_lib.PreemptionGuard() as guard:
    try:
      while step < train_steps:
        local = first_batch if first_batch is not None else next(data_iter)
        first_batch = None
        state, metrics = p_train_step(state, _to_global(local, batch_sharding))
        if pending is not None:  # read step s-1's metrics while s runs
          collect(pending)
        pending = (step, metrics)
        step += 1
        interval_steps += 1
        last = step == train_steps
        if step % log_every == 0 or last or step == start_step + 1:
          collect(pending)
          pending = None
          report(step)
        if last or ckpt.manager.should_save(step):
          if pending is not None:  # never checkpoint a non-finite update
            collect(pending)
            pending = None
          ckpt.save(step, state.params, state.opt_state, meta_base,
                    force=True, model_state=state.model_state)
          last_saved = step
        if eval_data is not None and eval_every and (
            step % eval_every == 0 or last):
          evaluate(step)
          interval_start = time.perf_counter()  # eval is not step time
        for hook in hooks:
          hook(step)
        if deadline is not None and not timed_out and time.monotonic() > deadline:
          # Through the guard, so that several hosts agree on the step.
          timed_out = True
          guard.request_stop("time_limit")
        # Hosts fold local stop requests with a collective: at log steps.
        reason = None if last else guard.stop_requested(
            step, gather=step % log_every == 0)
        if reason is not None:
          if pending is not None:
            collect(pending)
            pending = None
          if last_saved != step:
            ckpt.save(step, state.params, state.opt_state, meta_base,
                      force=True, model_state=state.model_state)
          stopped = reason
          if is_chief:
            why = (f"max_minutes={max_minutes}" if reason == "time_limit"
                   else "SIGTERM")
            print(f"stopping at step {step} ({why}); checkpoint saved",
                  flush=True)
          break
      if pending is not None:
        collect(pending)
    finally:
      ckpt.close()
      if writer is not None:
        writer.close()
  return TrainResult(step=step, state=state, history=history,
                     eval_history=eval_history, stopped=stopped,
                     start_step=start_step)


GIN_CONFIGURABLES = (train, PipelineSource)
