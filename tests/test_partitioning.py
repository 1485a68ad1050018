"""Partitioning: rule tables, mesh, sharded init, and sharded == single-device."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from protjax import axes, optim, partitioning, trainer
from protjax.errors import InputError

import trainer_toy


def test_every_rule_set_covers_every_logical_name_once():
  for name, rules in partitioning.RULE_SETS.items():
    table = partitioning.validate_rules(rules)
    assert set(axes.PARAM_AXES + axes.ACTIVATION_AXES) <= set(table), name
    assert table[axes.BATCH] == "data", name
  tp = dict(partitioning.RULE_SETS["tp"])
  # t5x standard rules.
  assert (tp["vocab"], tp["embed"], tp["mlp"], tp["heads"], tp["kv"]) == (
      "model", None, "model", "model", None)
  assert dict(partitioning.RULE_SETS["fsdp+tp"])["embed"] == "data"
  assert dict(partitioning.RULE_SETS["fsdp"])["mlp"] is None


def test_bad_rules_fail_loudly():
  rules = partitioning.RULE_SETS["tp"]
  with pytest.raises(ValueError, match="two rules"):
    partitioning.validate_rules(rules + (("mlp", None),))
  with pytest.raises(ValueError, match="no rule"):
    partitioning.validate_rules(rules[1:])
  with pytest.raises(ValueError, match="no partitioning rule"):
    partitioning.logical_to_mesh_axes(("embed", "experts"), rules)
  with pytest.raises(ValueError, match="one mesh axis"):
    partitioning.logical_to_mesh_axes(("heads", "mlp"), rules)
  with pytest.raises(InputError, match="unknown partitioning rules"):
    partitioning.get_rules("zero3")
  assert partitioning.logical_to_mesh_axes(
      ("embed", "heads", "kv"), rules) == P(None, "model", None)


def test_mesh_shapes_and_errors():
  mesh = partitioning.make_mesh(4)
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  assert mesh.devices[0, 1] == jax.devices()[1]  # model groups are neighbours
  assert dict(partitioning.make_mesh(1).shape) == {"data": 8, "model": 1}
  with pytest.raises(InputError, match="not one of"):
    partitioning.make_mesh(3)
  with pytest.raises(InputError, match="does not divide"):
    partitioning.make_mesh(16)


def _toy_abstract():
  model = trainer_toy.ToyModel()
  shapes = {"encoder_input_tokens": (8, 12)}
  return jax.eval_shape(lambda r: model.init_variables(r, shapes),
                        jax.random.PRNGKey(0))


def test_param_specs_tp_and_fsdp():
  variables = _toy_abstract()
  tp = partitioning.make_partitioner(4, "tp")
  table = tp.sharding_table(variables["params"], variables["params_axes"])
  assert table["embedding"] == {"shape": [32, 16], "logical": ["vocab", "embed"],
                                "spec": ["model"]}
  assert table["query"]["spec"] == [None, "model"]
  assert table["wo"]["spec"] == ["model"]
  assert table["scale"]["spec"] == []
  fsdp_tp = partitioning.make_partitioner(4, "fsdp+tp")
  specs = fsdp_tp.param_specs(variables["params"], variables["params_axes"])
  assert specs["wi"] == P("data", "model")
  assert specs["scale"] == P("data")
  # A dimension the mesh axis does not divide is replicated, not mis-sharded:
  # heads=4 over model=8.
  mp8 = partitioning.make_partitioner(8, "tp")
  assert mp8.param_specs(variables["params"],
                         variables["params_axes"])["query"] == P()


def test_param_without_axes_is_an_error():
  variables = _toy_abstract()
  axes_tree = dict(variables["params_axes"])
  del axes_tree["wi_axes"]
  with pytest.raises(ValueError, match="'wi' has no logical axes"):
    partitioning.make_partitioner(4).param_specs(variables["params"],
                                                 axes_tree)


def _one_step(partitioner, batch, num_microbatches=1):
  setup = trainer.setup_training(
      trainer_toy.ToyModel(), optim.adafactor(optim.constant_schedule(0.05),
                                              min_dim_size_to_factor=8),
      partitioner, {k: v.shape for k, v in batch.items()},
      num_microbatches=num_microbatches, seed=3)
  state = setup.init_state()
  state, metrics = setup.train_step(state, setup.to_global(batch))
  return state, jax.device_get(metrics)


def test_sharded_step_matches_single_device():
  # Dropout is on: its RNG is fold_in(rng, step) and threefry is
  # partitionable, so the masks are the same however the batch is split.
  batch = trainer_toy.ToyData(batch_size=16, seed=1).batch(0)
  single = partitioning.Partitioner(
      partitioning.make_mesh(1, jax.devices()[:1]), partitioning.get_rules("tp"))
  ref_state, ref_m = _one_step(single, batch)
  for mp, rules in ((4, "tp"), (1, "tp")):
    part = partitioning.make_partitioner(mp, rules)
    state, m = _one_step(part, batch)
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-6)
    np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-5)
    for path, ref in jax.tree_util.tree_leaves_with_path(ref_state.params):
      got = _get(state.params, path)
      np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5,
                                 atol=1e-6, err_msg=f"{rules} mp={mp} {path}")
    if mp == 4:
      # Checked from the arrays' shardings, not assumed: every parameter
      # bigger than a vector is split 4 ways over `model`, and each device
      # holds only its shard.
      for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        if leaf.ndim >= 2:
          assert partitioning.split_fraction(leaf.sharding, leaf.shape,
                                             "model") == 4, path
          shard = leaf.addressable_shards[0].data
          assert shard.size * 4 == leaf.size, path
      v_col = state.opt_state[0].v_col["wi"]  # factored [mlp] statistic
      assert v_col.sharding.spec == P("model")


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree
