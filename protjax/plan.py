"""`protjax-plan`: will a run fit a TPU slice, and how fast will its step be?

  protjax-plan --gin_file=gin_configs/runs/prott5_xl_bfd.gin --topology v3:16x32
  protjax-plan --gin_file=gin_configs/runs/demo.gin --topology cpu:8 --json plan.json
  protjax-plan --gin_file=gin_configs/runs/prott5_xl_bfd.gin --topology v4-128 \\
      --embed --length 1024 --batch 256

Builds exactly the step `protjax-train` would run with the same gin files and
`--gin.X=` bindings (the trainer's own `setup_training`: same model, optimiser,
partitioner and rules, micro-batches, remat, dtypes) on the devices of a
topology, and compiles it ahead of time from abstract shapes: no parameter is
ever created. A TPU topology (`v3:16x32` is the paper's v3-1024) is compiled
by the real XLA:TPU compiler from libtpu on any machine, no TPU needed
(`pip install -e ".[tpu]"`); `cpu:N` compiles for N CPU devices.

Prints the mesh and how it lies on the chips; per device the parameter,
optimiser-state and batch bytes (from the shard shapes), the compiler's
temporaries and total against the chip's memory; FLOPs per step, the
compiler's own step-time estimate (TPU), and the projected examples/s and
MFU (model FLOPs from the family's formula). `--embed` plans the encoder
forward of `protjax-embed` for one padded batch instead.

Exit status: 0 the step fits, 3 (`EXIT_DOES_NOT_FIT`) it does not (XLA:TPU
refuses a program that does not fit; the plan reports its figures), 2 bad
input (an unknown topology, a model-parallel size it cannot lay out, libtpu
missing for a TPU topology, a bad gin value: one `error:` line).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import time
from typing import Any, Optional, Sequence

from protjax.errors import InputError, cli_main

EXIT_DOES_NOT_FIT = 3
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation as a slice offers it.

  Attributes:
    hbm_bytes: HBM of one chip (v3: two cores of 16 GiB).
    megacore: compile for one device per chip, as a real slice of this
      generation runs (v4, v5p); otherwise each core is a device (v2, v3).
  """
  hbm_bytes: int
  megacore: bool = False


CHIPS = {
    "v2": Chip(16 * GIB),
    "v3": Chip(32 * GIB),
    "v4": Chip(32 * GIB, megacore=True),
    "v5e": Chip(16 * GIB),
    "v5p": Chip(95 * GIB, megacore=True),
    "v6e": Chip(32 * GIB),
}
# Cloud accelerator types (v3/v4/v5p count cores, v5e/v6e chips) of the
# slices the paper's runs and their modern replacements use.
ALIASES = {
    "v3-8": "v3:2x2", "v3-32": "v3:4x4", "v3-512": "v3:16x16",
    "v3-1024": "v3:16x32", "v4-8": "v4:2x2x1", "v4-128": "v4:4x4x4",
    "v4-256": "v4:4x4x8", "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8",
    "v5e-256": "v5e:16x16", "v6e-256": "v6e:16x16",
}
_TPU_NAME = re.compile(r"^(v\d+[a-z]?):(\d+(x\d+){1,2})$")
_CPU_NAME = re.compile(r"^cpu:(\d+)$")

# Feature names of each feature converter (protjax.data.feature_converters;
# "lm": ProtTXL's stream, protjax.data.stream); every feature is int32
# [batch, length].
FEATURES = {
    "encdec": ("encoder_input_tokens", "decoder_input_tokens",
               "decoder_target_tokens", "decoder_loss_weights"),
    "encoder": ("encoder_input_tokens", "encoder_target_tokens",
                "encoder_loss_weights"),
    "lm": ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"),
}
PACKED_FEATURES = {
    "encdec": ("encoder_segment_ids", "decoder_segment_ids",
               "encoder_positions", "decoder_positions"),
    "encoder": ("encoder_segment_ids", "encoder_positions"),
}
# Placeholders for the bindings a run needs and a plan never reads; the
# user's own bindings come after them and win.
PLAN_BINDINGS = ("train.model_dir = 'unused-by-protjax-plan'",
                 "train.init_from = None")


# --------------------------------------------------------------------------
# Topologies.
# --------------------------------------------------------------------------
def parse_topology(name: str) -> tuple[str, str, int]:
  """`v3:16x32` / `v3-1024` / `cpu:8` -> (platform, canonical name, CPU count).

  Checks the name only (no jax): an unknown one is an InputError.
  """
  name = ALIASES.get(name, name)
  cpu = _CPU_NAME.match(name)
  if cpu:
    if int(cpu.group(1)) < 1:
      raise InputError(f"topology {name!r}: give at least one CPU device")
    return "cpu", name, int(cpu.group(1))
  tpu = _TPU_NAME.match(name)
  if not tpu or tpu.group(1) not in CHIPS:
    raise InputError(
        f"unknown topology {name!r}; give a TPU slice as GENERATION:SHAPE "
        f"({', '.join(sorted(CHIPS))}; e.g. v3:16x32, v4:4x4x4), one of "
        f"{', '.join(ALIASES)}, or cpu:N")
  return "tpu", name, 0


@dataclasses.dataclass
class Topology:
  """The devices a plan compiles for.

  Attributes:
    name: canonical name ("v3:16x32", "cpu:8").
    platform: "tpu" or "cpu".
    devices: the devices, in the order the slice numbers them.
    memory_per_device: bytes of memory one device may use (None: no limit).
    peak_flops_per_device: dense bf16 peak FLOP/s of one device (None: CPU).
  """
  name: str
  platform: str
  devices: list
  memory_per_device: Optional[int]
  peak_flops_per_device: Optional[float]

  @property
  def chips(self) -> dict:
    """Chip coordinates -> the devices on that chip (one per device on CPU)."""
    out: dict = {}
    for i, d in enumerate(self.devices):
      key = tuple(getattr(d, "coords", None) or (i,))
      out.setdefault(key, []).append(d)
    return out


def _libtpu_available() -> bool:
  return bool(os.environ.get("TPU_LIBRARY_PATH")) or (
      importlib.util.find_spec("libtpu") is not None)


def get_topology(name: str, memory_gib: Optional[float] = None) -> Topology:
  """The devices of a topology: a TPU slice's compile-only devices (libtpu),
  or N of this process's CPU devices. `memory_gib` overrides the memory per
  device (CPU devices have no limit unless given)."""
  import jax  # pylint: disable=import-outside-toplevel

  from protjax import trainer  # pylint: disable=import-outside-toplevel
  platform, name, num_cpus = parse_topology(name)
  override = None if memory_gib is None else int(memory_gib * GIB)
  if platform == "cpu":
    devices = jax.devices("cpu")
    if len(devices) < num_cpus:
      raise InputError(f"topology {name!r} needs {num_cpus} CPU devices; this "
                       f"process has {len(devices)} (run protjax-plan as its own "
                       "process, or set --xla_force_host_platform_device_count)")
    return Topology(name, "cpu", list(devices[:num_cpus]), override, None)
  if not _libtpu_available():
    raise InputError(f"topology {name!r} needs libtpu to compile for TPU: "
                     "pip install -e \".[tpu]\"")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  generation = name.split(":")[0]
  chip = CHIPS[generation]
  kwargs = {"chip_config_name": "megacore"} if chip.megacore else {}
  try:
    devices = topologies.get_topology_desc(
        platform="tpu", topology_name=name, **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except
    problem = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f"topology {name!r}: {problem}") from None
  topo = Topology(name, "tpu", list(devices), None,
                  trainer.peak_flops_per_device(devices[0]))
  per_chip = len(devices) // len(topo.chips)
  topo.memory_per_device = override or chip.hbm_bytes // per_chip
  return topo


# libtpu as a compiler only: no metadata-server queries or worker names (it
# would print two error lines on a machine with no slice), and no claim on
# /tmp/libtpu_lockfile, which keeps a second process off a machine's TPUs
# (a plan attaches none, so several plans may compile at once).
_LIBTPU_COMPILE_ONLY = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
                        "TPU_ACCELERATOR_TYPE": "v3-8", "TPU_STDERR_LOG_LEVEL": "3",
                        "TPU_MIN_LOG_LEVEL": "3", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def _set_up_jax(platform: str, num_cpus: int) -> None:
  """Before jax starts a backend: the CPU only (a TPU topology is compiled
  for, never attached; libtpu on a machine without TPUs would otherwise be
  tried as a backend), with `num_cpus` devices for a cpu:N plan."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if platform == "tpu":
    for key, value in _LIBTPU_COMPILE_ONLY.items():
      os.environ.setdefault(key, value)
  if xla_bridge.backends_are_initialized():
    return  # in-process (tests): get_topology checks the device count
  jax.config.update("jax_platforms", "cpu")
  if platform == "cpu" and num_cpus > 1:
    jax.config.update("jax_num_cpu_devices", num_cpus)


def describe_mesh(mesh, topology: Topology) -> dict:
  """How the (`data`, `model`) mesh lies on the chips: per model group (one
  row of the mesh: the devices that split one replica) the chips it covers,
  their bounding box and the hosts it spans, worst case over the groups."""
  chip_of = {}
  for coords, devs in topology.chips.items():
    for d in devs:
      chip_of[d.id] = coords
  rows = mesh.devices.reshape(mesh.devices.shape[0], -1)
  worst = {"chips": 0, "hosts": 0, "box": ()}
  for row in rows:
    coords = {chip_of[d.id] for d in row}
    box = tuple(max(c[i] for c in coords) - min(c[i] for c in coords) + 1
                for i in range(len(next(iter(coords)))))
    hosts = len({d.process_index for d in row})
    if (len(coords), hosts, math.prod(box)) > (
        worst["chips"], worst["hosts"], math.prod(worst["box"] or (0,))):
      worst = {"chips": len(coords), "hosts": hosts, "box": box}
  return {
      "shape": {k: int(v) for k, v in mesh.shape.items()},
      "devices": int(mesh.devices.size),
      "chips": len(topology.chips),
      "devices_per_chip": int(mesh.devices.size) // len(topology.chips),
      "hosts": len({d.process_index for d in topology.devices}),
      "device_kind": topology.devices[0].device_kind,
      "model_group_chips": worst["chips"],
      "model_group_box": "x".join(str(b) for b in worst["box"]),
      "model_group_hosts": worst["hosts"],
  }


# --------------------------------------------------------------------------
# The run as protjax-train would build it.
# --------------------------------------------------------------------------
def batch_shapes(data) -> dict[str, tuple[int, int]]:
  """Global batch shapes of a DataConfig's features (no data read): the
  feature converter of the task's objective (`{corpus}_{objective}`)."""
  from protjax.data import objectives  # pylint: disable=import-outside-toplevel
  objective = data.task_name.rpartition("_")[2]
  try:
    kind = data.feature_converter or objectives.make_objective(objective).converter
  except ValueError:
    raise InputError(f"task {data.task_name!r}: protjax-plan reads the objective from the "
                     f"task name's suffix ({', '.join(objectives.OBJECTIVES)}); "
                     "set DataConfig.feature_converter") from None
  if kind not in FEATURES:
    raise InputError(f"unknown feature converter {kind!r}; expected {tuple(FEATURES)}")
  length = objectives.single_length(data.sequence_length)
  names = FEATURES[kind] + (PACKED_FEATURES.get(kind, ()) if data.pack else ())
  return {k: (data.batch_size, length) for k in names}


def _resolve_dtype(model, platform: str):
  """The model with `dtype='auto'` resolved for the planned platform (the
  models resolve it from the backend they run on, here always the CPU)."""
  from protjax.models import registry  # pylint: disable=import-outside-toplevel
  config = getattr(model, "config", None)
  if getattr(config, "dtype", None) != "auto":
    return model
  dtype = "float32" if platform == "cpu" else "bfloat16"
  return registry.get_model(model.family, dataclasses.replace(config, dtype=dtype))


class _Devices(list):
  """A device list gin can bind: gin deep-copies bound values on every call,
  and devices cannot be copied (nor need to be)."""

  def __deepcopy__(self, memo):
    return self


def run_arguments(devices: Sequence[Any]) -> dict:
  """`trainer.train`'s arguments as the parsed gin configuration gives them,
  with the partitioner's mesh on `devices` (defaults filled in)."""
  import gin  # pylint: disable=import-outside-toplevel

  from protjax import partitioning, trainer  # pylint: disable=import-outside-toplevel
  with gin.unlock_config():
    gin.bind_parameter("make_partitioner.devices", _Devices(devices))
  try:
    bound = gin.get_bindings(trainer.train)
  except InputError as e:  # without gin's "In call to configurable" line
    raise InputError(e.problem, path=e.path, record=e.record,
                     position=e.position) from None
  args = {k: p.default for k, p in inspect.signature(trainer.train).parameters.items()
          if p.default is not inspect.Parameter.empty}
  args.update(bound)
  if args.get("partitioner") is None:
    args["partitioner"] = partitioning.make_partitioner(devices=devices)
  for needed in ("model", "optimizer", "train_data"):
    if needed not in bound:
      raise InputError(f"the gin configuration binds no train.{needed}")
  return args


def _bytes_per_device(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the
  largest shard: uneven splits are padded to it)."""
  import jax  # pylint: disable=import-outside-toplevel
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


_SIZE = re.compile(r"([\d.]+)\s*([KMGT]?)i?B?\b")


def _parse_size(text: str) -> Optional[int]:
  m = _SIZE.fullmatch(text.strip())
  if not m:
    return None
  return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def out_of_memory_figures(message: str) -> Optional[dict]:
  """What XLA:TPU says when a program does not fit HBM: required and
  available bytes (None when the message is not an out-of-memory error)."""
  if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
    return None
  out = {"compiler_message": next(
      (l.strip() for l in message.splitlines() if "memory" in l.lower()),
      message.splitlines()[0] if message else "")[:400]}
  m = re.search(r"required for ([\w ]+?) \(([^)]+)\) exceeds available \w+ \(([^)]+)\)",
                message)
  if m:
    out.update(what=m.group(1), required=_parse_size(m.group(2)),
               available=_parse_size(m.group(3)))
    return out
  m = re.search(r"Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm", message)
  if m:
    out.update(what="the program", required=_parse_size(m.group(1)),
               available=_parse_size(m.group(2)))
  return out


def _compile(lowered) -> tuple[Any, Optional[dict], float]:
  """(compiled or None, out-of-memory figures or None, compile seconds)."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    figures = out_of_memory_figures(str(e))
    if figures is None:
      raise
    return None, figures, time.perf_counter() - start
  return compiled, None, time.perf_counter() - start


def _cost(compiled_or_lowered) -> dict:
  cost = compiled_or_lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def _memory(compiled) -> dict:
  """The compiler's per-device memory figures; total = arguments + outputs -
  donated (aliased) + temporaries + the program itself (on TPU, `_finish`
  takes XLA's peak of live buffers + the program instead)."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes",
            "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  out = {f.replace("_size_in_bytes", ""): int(getattr(m, f, 0) or 0) for f in fields}
  out["total"] = (out["argument"] + out["output"] - out["alias"] + out["temp"]
                  + out["generated_code"])
  # XLA:TPU's own peak of live buffers (arguments, temporaries and outputs are
  # not all live at once), what it checked against HBM; XLA:CPU's leaves the
  # temporaries out, so there the sum above stands.
  out["peak"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  return out


def _finish(plan: dict, topology: Topology, compiled, oom: Optional[dict],
            lowered) -> dict:
  """Memory verdict, FLOPs and the projections from the compiler's figures."""
  limit = topology.memory_per_device
  plan["memory_per_device"] = limit
  argument_bytes = (plan["params_bytes"] + plan["opt_state_bytes"] + plan["batch_bytes"]
                    + plan.get("model_state_bytes", 0))
  if compiled is not None:
    mem = _memory(compiled)
    if topology.platform == "tpu" and mem["peak"]:
      mem["sum"], mem["total"] = mem["total"], mem["peak"] + mem["generated_code"]
    plan["memory"] = mem
    plan["fits"] = limit is None or mem["total"] <= limit
    cost = _cost(compiled)
  else:
    # XLA:TPU names either the temporaries (to be added to the arguments it
    # holds besides) or the whole program.
    temps = oom.get("what", "").endswith("temporaries")
    required = oom.get("required")
    total = None if required is None else required + (argument_bytes if temps else 0)
    plan["memory"] = {"temp": required if temps else None, "total": total,
                      "available_to_compiler": oom.get("available")}
    plan["compiler_message"] = oom["compiler_message"]
    plan["fits"] = False
    # The partitioned program was never built: the whole step's HLO figures.
    plan["hlo_flops_per_step"] = _cost(lowered).get("flops")
    cost = {}
  # XLA costs a loop's body once, whatever its trip count: the step's
  # micro-batch scan runs `loops` times (the optimiser update, outside it and
  # a small share, is scaled with it: a slight overestimate).
  loops = plan.get("num_microbatches", 1)
  seconds = cost.get("optimal_seconds") if compiled is not None else None
  plan["xla_optimal_seconds"], plan["xla_flops_per_device"] = seconds, cost.get("flops")
  plan["compiler_flops_per_device"] = cost.get("flops") and cost["flops"] * loops
  plan["bytes_accessed_per_device"] = cost.get("bytes accessed")
  plan["estimated_step_seconds"] = seconds * loops if seconds and seconds > 0 else None
  if plan.get("blockwise_attention"):
    plan["estimated_step_seconds"] = None  # its key-block scan is costed once too
  return plan


def plan_training(topology: Topology) -> dict:
  """Compiles protjax-train's step for `topology` (gin already parsed)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from protjax import trainer  # pylint: disable=import-outside-toplevel
  args = run_arguments(topology.devices)
  data = getattr(args["train_data"], "data", None)
  if data is None or not hasattr(data, "batch_size"):
    raise InputError("protjax-plan needs train.train_data to be a PipelineSource "
                     "over a DataConfig (the batch shapes come from it)")
  partitioner = args["partitioner"]
  shapes = batch_shapes(data)
  global_batch, length = next(iter(shapes.values()))
  micro = args["num_microbatches"]
  if global_batch % (partitioner.data_size * micro):
    raise InputError(f"global batch {global_batch} is not divisible by data "
                     f"parallelism {partitioner.data_size} x {micro} micro-batches")
  model = _resolve_dtype(args["model"], topology.platform)
  setup = trainer.setup_training(model, args["optimizer"], partitioner, shapes,
                                 num_microbatches=micro, dropout=args["dropout"],
                                 seed=args["seed"])
  batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=setup.batch_sharding)
           for k, v in shapes.items()}
  state = setup.abstract_state
  # setup.train_step is the jitted step wrapped to trace in the mesh/rules
  # context; lower its jitted function in that same context.
  with partitioner.activation_context():
    lowered = setup.train_step.__wrapped__.lower(state, batch)
  compiled, oom, seconds = _compile(lowered)
  params, opt = _bytes_per_device(state.params), _bytes_per_device(state.opt_state)
  plan = {
      "kind": "train", "topology": topology.name,
      "mesh": describe_mesh(partitioner.mesh, topology),
      "rules": _rules_name(partitioner.rules),
      "family": getattr(model, "family", None),
      "dtype": str(jnp.dtype(model.config.compute_dtype)) if hasattr(
          model.config, "compute_dtype") else None,
      "remat": getattr(model.config, "remat", None),
      "global_batch": global_batch, "sequence_length": length,
      "num_microbatches": micro,
      "param_count": sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
      "params_bytes": params, "opt_state_bytes": opt,
      "batch_bytes": _bytes_per_device(batch),
      # ProtTXL's memory of the previous segment (TrainState.model_state).
      "model_state_bytes": _bytes_per_device(state.model_state),
      "compile_seconds": seconds, "load_average": list(os.getloadavg()),
      "model_flops_per_step": float(model.flops_per_example(shapes)) * global_batch,
  }
  return _project(_finish(plan, topology, compiled, oom, lowered), topology,
                  global_batch)


def _project(plan: dict, topology: Topology, examples: int) -> dict:
  """Examples/s and MFU from the compiler's step time (TPU only)."""
  seconds = plan["estimated_step_seconds"]
  peak = topology.peak_flops_per_device
  plan["peak_flops_per_device"] = peak
  plan["examples_per_second"] = examples / seconds if seconds else None
  plan["mfu"] = (plan["model_flops_per_step"] / (seconds * peak * len(topology.devices))
                 if seconds and peak else None)
  return plan


def _rules_name(rules) -> str:
  from protjax import partitioning  # pylint: disable=import-outside-toplevel
  return next((k for k, v in partitioning.RULE_SETS.items() if v == rules), "custom")


def plan_embedding(topology: Topology, length: int, batch: int, *,
                   dtype: str = "bfloat16", model_parallel: str = "auto") -> dict:
  """Compiles protjax-embed's encoder forward (the Embedder's own jitted
  function) for one padded `[batch, length]` batch of the gin run's model."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from protjax import embed, partitioning  # pylint: disable=import-outside-toplevel
  from protjax.models import registry  # pylint: disable=import-outside-toplevel
  if length < 1 or batch < 1:
    raise InputError("--length and --batch must be positive")
  config = run_arguments(topology.devices)["model"].config
  family = registry.family_of(config)
  abstract = jax.eval_shape(
      lambda t: family.encoder(config).init(jax.random.PRNGKey(0), t),
      jax.ShapeDtypeStruct((1, 8), jnp.int32))["params"]
  cast = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype if x.ndim <= 1 else jnp.dtype(dtype))
  params = jax.tree.map(cast, abstract)
  param_bytes = partitioning.num_bytes(params)
  mp = _embed_model_parallel(model_parallel, param_bytes, topology)
  # An Embedder without weights: the same fields its __init__ sets, so that
  # its own _shardings_for and forward_fn build the program protjax-embed runs.
  emb = object.__new__(embed.Embedder)
  emb.family, emb.dtype, emb.storage_dtype, emb._fns = family, dtype, "float32", {}
  emb.config = dataclasses.replace(config, dtype=dtype, dropout_rate=0.0,
                                   attention_impl="xla")
  emb.partitioner = partitioning.make_partitioner(
      mp, rules="tp" if mp > 1 else "dp", devices=topology.devices)
  emb.batching = embed.Batching(num_shards=emb.partitioner.data_size)
  if batch % emb.partitioner.data_size:
    raise InputError(f"--batch {batch} is not a multiple of the "
                     f"{emb.partitioner.data_size} data-parallel replicas")
  shardings = emb._param_shardings = emb._shardings_for(params)  # pylint: disable=protected-access
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        params, shardings)
  sharding = emb.partitioner.batch_sharding()
  inputs = {k: jax.ShapeDtypeStruct((batch, length), jnp.bool_ if k == "residue_mask"
                                    else jnp.int32, sharding=sharding)
            for k in ("tokens", "segment_ids", "positions", "residue_mask")}
  long = emb.batching.is_long(length)
  with emb.partitioner.activation_context():
    lowered = emb.forward_fn(long=long).lower(params, inputs)
  compiled, oom, seconds = _compile(lowered)
  plan = {
      "kind": "embed", "topology": topology.name,
      "mesh": describe_mesh(emb.partitioner.mesh, topology),
      "rules": "tp" if mp > 1 else "dp", "family": family.name, "dtype": dtype,
      "global_batch": batch, "sequence_length": length, "blockwise_attention": long,
      "param_count": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
      "params_bytes": _bytes_per_device(params), "opt_state_bytes": 0,
      "batch_bytes": _bytes_per_device(inputs),
      "compile_seconds": seconds, "load_average": list(os.getloadavg()),
      "model_flops_per_step": float(family.module().encoder_flops(config, length)) * batch,
  }
  return _project(_finish(plan, topology, compiled, oom, lowered), topology, batch)


def _embed_model_parallel(choice: str, param_bytes: int, topology: Topology) -> int:
  """protjax-embed's 'auto' rule (the smallest size whose parameter shard
  fits half a device) on the topology's memory, or the given size."""
  from protjax import partitioning  # pylint: disable=import-outside-toplevel
  if choice != "auto":
    try:
      return int(choice)
    except ValueError:
      raise InputError(f"--model_parallel {choice!r} is neither an integer nor 'auto'") from None
  limit = topology.memory_per_device
  if not limit:
    return 1
  n = len(topology.devices)
  for mp in partitioning.MODEL_PARALLEL_SIZES:
    if n % mp == 0 and param_bytes / mp < 0.5 * limit:
      return mp
  raise InputError(f"the model's {param_bytes / GIB:.1f} GiB of parameters do not fit "
                   f"{n} devices of {limit / GIB:.1f} GiB")


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------
def _gib(n: Optional[float]) -> str:
  return "n/a" if n is None else f"{n / GIB:.2f} GiB"


def format_plan(plan: dict) -> str:
  """The human-readable table."""
  mesh, mem = plan["mesh"], plan["memory"]
  rows = [
      ("topology", f"{plan['topology']} ({mesh['device_kind']}): {mesh['devices']} "
                   f"devices on {mesh['chips']} chips, {mesh['devices_per_chip']} per "
                   f"chip, {mesh['hosts']} hosts"),
      ("mesh", f"data {mesh['shape']['data']} x model {mesh['shape']['model']}, rules "
               f"{plan['rules']}; a model group covers {mesh['model_group_chips']} "
               f"chips ({mesh['model_group_box']}) on {mesh['model_group_hosts']} host(s)"),
      ("step", f"{plan['kind']}: {plan['family']} {plan['dtype']}, batch "
               f"{plan['global_batch']} x {plan['sequence_length']}"
               + (f", {plan['num_microbatches']} micro-batches, remat {plan['remat']}"
                  if plan["kind"] == "train" else "")),
      ("parameters", f"{plan['param_count']:,}"),
      ("params / device", _gib(plan["params_bytes"])),
      ("opt state / device", _gib(plan["opt_state_bytes"])),
      ("batch / device", _gib(plan["batch_bytes"])),
      *([("memory / device", _gib(plan["model_state_bytes"]))]
        if plan.get("model_state_bytes") else []),
      ("temporaries / device", _gib(mem.get("temp"))),
      ("total / device", f"{_gib(mem.get('total'))} of {_gib(plan['memory_per_device'])}"),
      ("verdict", "FITS" if plan["fits"] else "DOES NOT FIT"),
  ]
  if plan.get("compiler_message"):
    rows.append(("compiler", plan["compiler_message"]))
  flops = plan.get("compiler_flops_per_device")
  model_flops = plan["model_flops_per_step"]
  rows += [
      ("FLOPs / step", ("n/a" if not model_flops else f"{model_flops:.3e} (model)")
       + (f", {flops:.3e} per device (compiler)" if flops else "")),
      ("est. step time", "n/a" if plan["estimated_step_seconds"] is None
       else f"{plan['estimated_step_seconds'] * 1e3:.1f} ms (XLA's estimate"
       + (f", its loop body x {plan['num_microbatches']} micro-batches)"
          if plan.get("num_microbatches", 1) > 1 else ")")),
      ("examples / s", "n/a" if plan["examples_per_second"] is None
       else f"{plan['examples_per_second']:,.0f}"),
      ("MFU", "n/a" if plan["mfu"] is None else f"{plan['mfu'] * 100:.1f}%"),
      ("compile time", f"{plan['compile_seconds']:.0f} s (load average "
                       f"{plan['load_average'][0]:.1f})"),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------
def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  """protjax-train's gin flags plus the topology and the embed options."""
  from protjax import train  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(
      prog="protjax-plan", description=__doc__.split("\n\n")[0],
      epilog="--gin.NAME=VALUE   one gin binding (repeatable), as protjax-train",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable)")
  parser.add_argument("--gin_search_path", action="append", default=[])
  parser.add_argument("--topology", required=True,
                      help="TPU slice (v3:16x32, v4:4x4x4, v5p:4x4x8, v5e:16x16, "
                      "v6e:16x16, or v3-1024, v4-128, ...) or cpu:N")
  parser.add_argument("--memory_gib", type=float, default=None,
                      help="memory per device (default: the chip's HBM; CPU: no limit)")
  parser.add_argument("--embed", action="store_true",
                      help="plan protjax-embed's encoder forward instead of training")
  parser.add_argument("--length", type=int, default=1024,
                      help="--embed: padded tokens per row (default %(default)s)")
  parser.add_argument("--batch", type=int, default=None,
                      help="--embed: padded rows per batch over all devices")
  parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                      default="bfloat16", help="--embed: compute dtype")
  parser.add_argument("--model_parallel", default="auto",
                      help="--embed: devices per model replica, or 'auto'")
  parser.add_argument("--json", default=None, help="also write the plan here as JSON")
  bindings, rest = train.split_gin_flags(argv)
  args = parser.parse_args(rest)
  if not args.gin_file:
    raise InputError("give at least one --gin_file (e.g. "
                     "gin_configs/runs/prott5_xl_bfd.gin)")
  args.gin_bindings = list(PLAN_BINDINGS) + bindings
  return args


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  platform, _, num_cpus = parse_topology(args.topology)
  _set_up_jax(platform, num_cpus)
  from protjax import gin_setup, tf_setup, train  # pylint: disable=import-outside-toplevel
  for binding in args.gin_bindings:
    gin_setup.check_binding(binding)
  tf_setup.import_tensorflow()  # quietly, before the data modules import it
  train._parse_config(args)  # pylint: disable=protected-access
  topology = get_topology(args.topology, args.memory_gib)
  if args.embed:
    if not args.batch:
      raise InputError("--embed needs --batch (padded rows over all devices)")
    plan = plan_embedding(topology, args.length, args.batch, dtype=args.dtype,
                          model_parallel=args.model_parallel)
  else:
    plan = plan_training(topology)
  print(format_plan(plan), flush=True)
  if args.json:
    from protjax import files  # pylint: disable=import-outside-toplevel
    files.write_text_atomic(args.json, json.dumps(plan, indent=2, sort_keys=True) + "\n")
  return 0 if plan["fits"] else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
  main()
