"""Partitioning: the device mesh, the logical-axis rule tables, and shardings.

Everything about how arrays are laid out over devices lives here, as data:

* a `jax.sharding.Mesh` with axes (`data`, `model`), built from the device list
  and a model-parallel size (`make_mesh`);
* named rule sets (`RULE_SETS`): plain tuples of (logical axis name, mesh axis
  or None) covering every parameter and activation name in `protjax.axes`.
  `tp` is t5x's standard table (vocab/mlp/heads over `model`, batch over
  `data`); `fsdp` shards every weight over `data` on its `embed` dimension as
  well; `dp` replicates weights. Models never name a mesh axis;
* `Partitioner`: turns a model's `params_axes` collection into
  `NamedSharding`s for the parameters and the optimiser state, gives the batch
  sharding, and a context in which the models' activation constraints
  (`with_logical_constraint`) resolve against the same rules.

A logical name with no rule, or a rule table that maps one name twice, is an
error, never a silent default.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Iterator, Mapping, Optional, Sequence

import flax
import flax.core
import flax.linen as nn
import flax.traverse_util
from flax.linen import partitioning as flax_partitioning
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from protjax import axes
from protjax.errors import InputError

DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)
MODEL_PARALLEL_SIZES = (1, 2, 4, 8, 16, 32)

Rules = tuple[tuple[str, Optional[str]], ...]

# Activations: batch over `data` always; with tensor parallelism the
# activations whose weights are split over `model` (mlp hidden, heads, logits)
# follow them, so no all-gather is needed between the two matmuls of a block.
_ACT_REPLICATED: Rules = (
    (axes.BATCH, DATA), (axes.LENGTH, None), (axes.ACT_EMBED, None),
    (axes.ACT_MLP, None), (axes.ACT_HEADS, None), (axes.ACT_KV, None),
    (axes.ACT_VOCAB, None), (axes.ACT_LAYERS, None), (axes.MEM_LENGTH, None))
_ACT_TP: Rules = (
    (axes.BATCH, DATA), (axes.LENGTH, None), (axes.ACT_EMBED, None),
    (axes.ACT_MLP, MODEL), (axes.ACT_HEADS, MODEL), (axes.ACT_KV, None),
    (axes.ACT_VOCAB, MODEL), (axes.ACT_LAYERS, None), (axes.MEM_LENGTH, None))

# BERT / ALBERT tables stay whole without FSDP. The token-embedding width is
# never split: it shares kernels with `embed` (ALBERT's projection, the MLM
# head), so it cannot follow `embed` onto `data`.
_BERT_REPLICATED: Rules = ((axes.ABSPOS, None), (axes.TOKEN_TYPES, None),
                           (axes.TOKEN_EMBED, None))
# FSDP: the 40,000-row position table is ~10% of ProtBert and has no `embed`
# dimension, so it is split over `data` by rows instead.
_BERT_FSDP: Rules = ((axes.ABSPOS, DATA), (axes.TOKEN_TYPES, None),
                     (axes.TOKEN_EMBED, None))
# Tensor parallelism: the position table is looked up like the vocabulary, so
# its rows split over `model` as the vocabulary's do.
_BERT_TP: Rules = ((axes.ABSPOS, MODEL), (axes.TOKEN_TYPES, None),
                   (axes.TOKEN_EMBED, None))

_PARAMS_REPLICATED: Rules = (
    (axes.VOCAB, None), (axes.EMBED, None), (axes.MLP, None),
    (axes.HEADS, None), (axes.KV, None), (axes.RELPOS_BUCKETS, None)) + _BERT_REPLICATED
# t5x standard_logical_axis_rules (parameter_partitioning_dims=1).
_PARAMS_TP: Rules = (
    (axes.VOCAB, MODEL), (axes.EMBED, None), (axes.MLP, MODEL),
    (axes.HEADS, MODEL), (axes.KV, None), (axes.RELPOS_BUCKETS, None)) + _BERT_TP
# FSDP: every weight has an `embed` dimension except the tiny relative
# position tables; sharding it over `data` splits ~all parameter and optimiser
# memory over the data-parallel replicas (t5x parameter_partitioning_dims=2).
_PARAMS_FSDP: Rules = (
    (axes.VOCAB, None), (axes.EMBED, DATA), (axes.MLP, None),
    (axes.HEADS, None), (axes.KV, None), (axes.RELPOS_BUCKETS, None)) + _BERT_FSDP
_PARAMS_FSDP_TP: Rules = (
    (axes.VOCAB, MODEL), (axes.EMBED, DATA), (axes.MLP, MODEL),
    (axes.HEADS, MODEL), (axes.KV, None), (axes.RELPOS_BUCKETS, None)) + _BERT_TP

RULE_SETS: Mapping[str, Rules] = {
    "dp": _PARAMS_REPLICATED + _ACT_REPLICATED,
    "tp": _PARAMS_TP + _ACT_TP,
    "fsdp": _PARAMS_FSDP + _ACT_REPLICATED,
    "fsdp+tp": _PARAMS_FSDP_TP + _ACT_TP,
}


def validate_rules(rules: Rules) -> dict[str, Optional[str]]:
  """Checks a rule table and returns it as a dict.

  Raises ValueError on a logical name mapped twice or a mesh axis that is not
  one of `MESH_AXES`, and on a table that misses a name from `protjax.axes`.
  """
  table: dict[str, Optional[str]] = {}
  for logical, mesh_axis in rules:
    if logical in table:
      raise ValueError(f"logical axis {logical!r} has two rules: "
                       f"{table[logical]!r} and {mesh_axis!r}")
    if mesh_axis is not None and mesh_axis not in MESH_AXES:
      raise ValueError(f"rule {logical!r} -> {mesh_axis!r}: mesh axes are "
                       f"{MESH_AXES}")
    table[logical] = mesh_axis
  missing = [n for n in axes.PARAM_AXES + axes.ACTIVATION_AXES if n not in table]
  if missing:
    raise ValueError(f"rule table has no rule for logical axes {missing}")
  return table


def get_rules(name: str) -> Rules:
  """The rule set called `name` (one of `RULE_SETS`), validated."""
  if name not in RULE_SETS:
    raise InputError(f"unknown partitioning rules {name!r}; choose one of "
                     f"{sorted(RULE_SETS)}")
  rules = RULE_SETS[name]
  validate_rules(rules)
  return rules


def logical_to_mesh_axes(logical: Sequence[Optional[str]],
                         rules: Rules) -> PartitionSpec:
  """Maps one array's logical axis names to a PartitionSpec.

  Unlike flax's resolver this fails on a name with no rule and on two
  dimensions that would land on the same mesh axis.
  """
  table = validate_rules(rules)
  spec = []
  for name in logical:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} (of {tuple(logical)}) has no "
                       f"partitioning rule")
    spec.append(table[name])
  used = [s for s in spec if s is not None]
  if len(used) != len(set(used)):
    raise ValueError(f"logical axes {tuple(logical)} map two dimensions onto "
                     f"one mesh axis: {tuple(spec)}")
  return PartitionSpec(*spec)


def make_mesh(model_parallel: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A (`data`, `model`) mesh over `devices` (default: all global devices).

  Args:
    model_parallel: devices per model replica; one of MODEL_PARALLEL_SIZES and
      a divisor of the device count.
    devices: devices in order; consecutive devices form one model group.
  Returns:
    Mesh of shape [num_devices // model_parallel, model_parallel].
  """
  devices = list(jax.devices() if devices is None else devices)
  if model_parallel not in MODEL_PARALLEL_SIZES:
    raise InputError(f"model_parallel={model_parallel} is not one of "
                     f"{MODEL_PARALLEL_SIZES}")
  if len(devices) % model_parallel:
    raise InputError(f"model_parallel={model_parallel} does not divide the "
                     f"{len(devices)} devices")
  shape = (len(devices) // model_parallel, model_parallel)
  device_array = None
  if devices[0].platform == "tpu" and len(devices) == len(devices[0].client.devices()):
    # On TPU let mesh_utils place model groups on physically close chips:
    # the whole slice, attached or (protjax-plan) a compile-only topology.
    try:
      from jax.experimental import mesh_utils
      device_array = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError) as e:
      logging.warning("mesh_utils could not lay out %s (%s); using device "
                      "order", shape, e)
  if device_array is None:
    device_array = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh,
              what: str, dropped: Optional[list] = None) -> PartitionSpec:
  """Drops the mesh axis from any dimension it does not divide evenly.

  (jax refuses uneven shards; replicating that dimension is always correct,
  just less memory-efficient. Dropped dimensions are appended to `dropped`.)
  """
  out = list(spec) + [None] * (len(shape) - len(spec))
  for i, mesh_axis in enumerate(out):
    if mesh_axis is not None and shape[i] % mesh.shape[mesh_axis]:
      if dropped is not None:
        dropped.append(f"{what}[{i}]={shape[i]} over {mesh_axis!r}"
                       f"={mesh.shape[mesh_axis]}")
      out[i] = None
  while out and out[-1] is None:
    out.pop()
  return PartitionSpec(*out)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


@dataclasses.dataclass(frozen=True)
class Partitioner:
  """A mesh plus one rule table: everything needed to lay arrays out.

  Attributes:
    mesh: the (`data`, `model`) mesh.
    rules: (logical name, mesh axis or None) pairs, e.g. RULE_SETS['tp'].
  """
  mesh: Mesh
  rules: Rules

  @property
  def data_size(self) -> int:
    return self.mesh.shape[DATA]

  @property
  def model_size(self) -> int:
    return self.mesh.shape[MODEL]

  def logical_specs(self, params_axes: Any) -> Any:
    """params_axes collection -> tree of logical PartitionSpecs (path-keyed)."""
    return flax_partitioning.get_axis_names(params_axes)

  def param_specs(self, abstract_params: Any, params_axes: Any) -> Any:
    """Tree of mesh PartitionSpecs for parameters (same structure as params).

    Raises ValueError naming a parameter that has no logical axes.
    """
    logical = flax.core.unfreeze(self.logical_specs(params_axes))
    flat_logical = flax.traverse_util.flatten_dict(logical, sep="/")

    dropped: list[str] = []

    def one(path, leaf):
      key = _path_str(path)
      if key not in flat_logical:
        raise ValueError(f"parameter {key!r} has no logical axes (create it "
                         f"with param_with_axes)")
      names = tuple(flat_logical[key])
      if len(names) != len(leaf.shape):
        raise ValueError(f"parameter {key!r}: logical axes {names} do not "
                         f"match its shape {leaf.shape}")
      return _fit_spec(logical_to_mesh_axes(names, self.rules), leaf.shape,
                       self.mesh, key, dropped)

    specs = jax.tree_util.tree_map_with_path(one, abstract_params)
    if dropped:
      logging.warning("%d parameter dimensions are not divisible by their "
                      "mesh axis and stay replicated, e.g. %s", len(dropped),
                      "; ".join(dropped[:3]))
    return specs

  def sharding(self, spec: PartitionSpec) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def param_shardings(self, abstract_params: Any, params_axes: Any) -> Any:
    return jax.tree.map(self.sharding, self.param_specs(abstract_params,
                                                        params_axes),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))

  def derived_specs(self, abstract_tree: Any, abstract_params: Any,
                    param_specs: Any) -> Any:
    """Specs for a tree whose leaves derive from parameters (optimiser state).

    A leaf whose key path ends with a parameter's path inherits that
    parameter's spec: unchanged when the shapes agree, with one dimension
    removed when the leaf is a factored (row / column) statistic of it
    (Adafactor). Anything else (counts, scalars, unrecognised shapes) is
    replicated, which is always correct.
    """
    flat_params = {
        _path_str(p): (leaf.shape, spec) for (p, leaf), spec in zip(
            jax.tree_util.tree_flatten_with_path(abstract_params)[0],
            jax.tree.leaves(param_specs,
                            is_leaf=lambda x: isinstance(x, PartitionSpec)))
    }

    def one(path, leaf):
      shape = tuple(getattr(leaf, "shape", ()))
      keys = _path_str(path).split("/")
      for start in range(len(keys)):
        found = flat_params.get("/".join(keys[start:]))
        if found is not None:
          break
      else:
        return PartitionSpec()
      p_shape, p_spec = found
      full = list(p_spec) + [None] * (len(p_shape) - len(p_spec))
      if shape == tuple(p_shape):
        return p_spec
      if len(shape) == len(p_shape) - 1:
        options = {tuple(full[:d] + full[d + 1:]) for d in range(len(p_shape))
                   if tuple(p_shape[:d]) + tuple(p_shape[d + 1:]) == shape}
        if len(options) == 1:
          return _fit_spec(PartitionSpec(*options.pop()), shape, self.mesh,
                           _path_str(path))
      return PartitionSpec()

    return jax.tree_util.tree_map_with_path(one, abstract_tree)

  def batch_spec(self) -> PartitionSpec:
    return logical_to_mesh_axes((axes.BATCH,), self.rules)

  def batch_sharding(self) -> NamedSharding:
    """Sharding of every `[batch, ...]` input array: batch over `data`."""
    return self.sharding(self.batch_spec())

  def replicated(self) -> NamedSharding:
    return self.sharding(PartitionSpec())

  @contextlib.contextmanager
  def activation_context(self) -> Iterator[None]:
    """Mesh + rules in scope, so models' logical constraints resolve.

    Use around tracing (jit calls) of anything that runs the model.
    """
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def sharding_table(self, abstract_params: Any, params_axes: Any
                     ) -> dict[str, dict[str, Any]]:
    """param path -> {shape, logical axes, spec}: the golden-file view."""
    logical = flax.traverse_util.flatten_dict(
        flax.core.unfreeze(self.logical_specs(params_axes)), sep="/")
    specs = self.param_specs(abstract_params, params_axes)
    table = {}
    for (path, leaf), spec in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0],
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))):
      key = _path_str(path)
      table[key] = {
          "shape": list(leaf.shape),
          "logical": list(logical[key]),
          "spec": [s if s is None or isinstance(s, str) else list(s)
                   for s in spec],
      }
    return table


def make_partitioner(model_parallel: int = 1, rules: str = "tp",
                     devices: Optional[Sequence[jax.Device]] = None
                     ) -> Partitioner:
  """Gin-facing constructor: mesh of the given model-parallel size + rule set.

  Args:
    model_parallel: size of the `model` mesh axis (1, 2, ..., 32).
    rules: name of a rule set in RULE_SETS: 'dp', 'tp' (t5x standard),
      'fsdp' (weights also over `data`), 'fsdp+tp'.
  """
  return Partitioner(make_mesh(model_parallel, devices), get_rules(rules))


def split_fraction(sharding: NamedSharding, shape: Sequence[int],
                   mesh_axis: str) -> int:
  """How many ways `mesh_axis` splits an array with this sharding (1 = not)."""
  spec = list(sharding.spec)
  n = 1
  for s in spec:
    names = s if isinstance(s, tuple) else (s,)
    if mesh_axis in names:
      n *= sharding.mesh.shape[mesh_axis]
  return n


def num_bytes(tree: Any) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


GIN_CONFIGURABLES = (make_partitioner,)
