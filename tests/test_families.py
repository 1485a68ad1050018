"""Every model family through the one trainer: resume, sharding, paper sizes.

One test per behaviour, parametrised over the families (`protjax.models.registry`);
each family's batches come from its own objective through the NumPy data
backend, on a small real-protein fixture.
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from protjax import checkpoints, optim, partitioning, trainer
from protjax.data.config import DataConfig
from protjax.models import registry

from helpers import batch_shapes

FAMILIES = tuple(registry.FAMILIES)
FASTA = str(pathlib.Path(__file__).parent / "fixtures" / "data" / "pretrain_small.fasta")
# Tiny and shallow (short compiles), 4 heads so attention splits 4 ways.
TINY = {"prott5": dict(num_heads=4, num_encoder_layers=1, num_decoder_layers=1),
        "protbert": dict(num_heads=4, num_layers=1),
        "protalbert": dict(num_heads=4, num_layers=2),
        "protelectra": dict(num_heads=4, num_layers=1, generator_num_heads=4,
                            generator_num_layers=1),
        "prottxl": dict(num_heads=4, num_layers=1),
        "protxlnet": dict(num_heads=4, num_layers=1)}


def tiny_model(family: str, **overrides):
  fam = registry.get_family(family)
  return registry.get_model(family, fam.get_config("tiny", **TINY[family], **overrides))


def data(family: str, batch_size: int = 8) -> DataConfig:
  """The family's own objective on the fixture proteins (NumPy backend)."""
  objective = registry.get_family(family).objective
  return DataConfig(task_name=f"protjax_sample_{objective}", backend="numpy",
                    source_files=(FASTA,), sequence_length=64, batch_size=batch_size,
                    validation_fraction=0.0)


def first_batch(family: str, batch_size: int = 8) -> dict:
  return next(iter(data(family, batch_size).get_dataset("train")))


def _train(family, model_dir, steps, dropout_rate=0.1):
  return trainer.train(
      model_dir=str(model_dir), model=tiny_model(family, dropout_rate=dropout_rate),
      optimizer=optim.lamb(optim.linear_warmup_decay(0.01, 2, 8)),
      train_data=trainer.PipelineSource(data(family)), train_steps=steps,
      partitioner=partitioning.make_partitioner(2, "tp"),
      checkpoint=checkpoints.CheckpointConfig(save_every=3, async_save=False), log_every=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_and_resume_is_bitwise_identical(family, tmp_path):
  """The family's loss (dropout included) and data are pure functions of
  (seed, step): 3 steps, a restart, 3 more equal 6 steps straight. (The
  kill -9 mechanics of the loop are tested once, in test_trainer.)"""
  first = _train(family, tmp_path / "resumed", 3)
  assert first.step == 3
  resumed = _train(family, tmp_path / "resumed", 6)
  assert resumed.start_step == 3
  straight = _train(family, tmp_path / "straight", 6)
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for step in range(3, 6):
    assert resumed.history[step]["loss"] == straight.history[step]["loss"]


def _one_step(partitioner, batch, model):
  setup = trainer.setup_training(
      model, optim.lamb(optim.constant_schedule(0.01)), partitioner,
      {k: v.shape for k, v in batch.items()}, seed=3)
  state, metrics = setup.train_step(setup.init_state(), setup.to_global(batch))
  return state, jax.device_get(metrics)


@pytest.mark.parametrize("family", FAMILIES)
def test_step_on_2x4_and_8x1_meshes_matches_one_device(family):
  """Dropout on: its masks are fold_in(rng, step) with partitionable threefry,
  the same however the batch is split."""
  model = tiny_model(family)
  batch = first_batch(family)
  single = partitioning.Partitioner(partitioning.make_mesh(1, jax.devices()[:1]),
                                    partitioning.get_rules("tp"))
  ref_state, ref = _one_step(single, batch, model)
  for mp in (1, 4):   # the last state checked below is the 2 x 4 one
    state, got = _one_step(partitioning.make_partitioner(mp, "tp"), batch, model)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params),
                            jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                                 err_msg=f"mp={mp} {jax.tree_util.keystr(path)}")
  # Checked from the arrays' shardings, not assumed: on (2, 4) every matrix
  # but the tiny tables (ProtBert's 30-row vocabulary, ALBERT's 16-wide
  # embedding) is split 4 ways over `model`, and so are its optimiser moments.
  moments = {jax.tree_util.keystr(p): x for p, x in
             jax.tree_util.tree_leaves_with_path(state.opt_state) if x.ndim >= 2}
  split = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    if leaf.ndim >= 2 and leaf.size > 1024:
      split += 1
      assert partitioning.split_fraction(leaf.sharding, leaf.shape, "model") == 4, path
      assert leaf.addressable_shards[0].data.size * 4 == leaf.size, path
      key = jax.tree_util.keystr(path)
      for name, moment in moments.items():
        if name.endswith(key) and moment.shape == leaf.shape:
          assert moment.sharding.spec == leaf.sharding.spec, name
  assert split > 0


def _paper_specs(family: str, size: str, rules: str, mesh_shape):
  """PartitionSpecs of the paper-size params on an abstract mesh (nothing allocated)."""
  fam = registry.get_family(family)
  model = registry.get_model(family, fam.get_config(size))
  shapes = batch_shapes(fam, 8, 512)
  variables = jax.eval_shape(lambda r: model.init_variables(r, shapes), jax.random.PRNGKey(0))
  mesh = AbstractMesh(mesh_shape, partitioning.MESH_AXES)
  part = partitioning.Partitioner(mesh, partitioning.get_rules(rules))
  specs = part.param_specs(variables["params"], variables["params_axes"])
  return variables["params"], specs


@pytest.mark.parametrize("family, size, model_parallel, rules", [
    ("protbert", "paper", 8, "tp"),
    ("protbert", "paper", 32, "fsdp+tp"),
    ("protalbert", "paper", 8, "tp"),
    ("protalbert", "paper", 32, "tp"),
    ("protelectra", "paper", 8, "tp"),
    ("protelectra", "paper", 32, "fsdp+tp"),
    ("protxlnet", "paper", 8, "tp"),
    ("prottxl", "paper", 8, "tp"),
])
def test_paper_sizes_split_every_large_weight(family, size, model_parallel, rules):
  """Every parameter of more than a million elements is split at least
  `model_parallel` ways on a (32, model_parallel) mesh of a real pod's size.
  ProtBert's 16 heads cannot split 32 ways over `model`: at 32-way its
  attention goes over `data` too (fsdp+tp), a rules change, not a model one.
  ProtElectra's discriminator is ProtBert's; its generator has no weight that
  large (the tables it reads are the discriminator's)."""
  params, specs = _paper_specs(family, size, rules, (32, model_parallel))
  sizes = {"data": 32, "model": model_parallel}
  leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params), leaves):
    ways = int(np.prod([sizes[a] for a in jax.tree.leaves(tuple(spec)) if a]))
    if leaf.size > 2**20:
      assert ways >= model_parallel, (jax.tree_util.keystr(path), leaf.shape, spec)
