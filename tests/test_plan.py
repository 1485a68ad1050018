"""protjax-plan: the trainer's own step compiled ahead of time for a topology.

Every CI run plans on `cpu:8` (the conftest's 8 CPU devices), the same code
path as a TPU slice; the XLA:TPU tests need libtpu (`pip install -e ".[tpu]"`)
and are skipped without it.
"""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import jax
import numpy as np
import pytest

from protjax import partitioning, plan
from protjax.data.config import DataConfig
from protjax.models import registry

REPO = pathlib.Path(__file__).parent.parent
DEMO = str(REPO / "gin_configs" / "runs" / "demo.gin")
SAMPLE = str(REPO / "protjax" / "data" / "sample" / "*.fasta")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
# A message XLA:TPU gave for ProtT5-XL's step as protjax configured it (v3-1024).
TPU_OOM = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory on "
           "HBM, the total memory required for HLO temporaries (23.61G) exceeds "
           "available HBM (15.48G).\nmore detail")


@pytest.fixture
def clean_gin():
  import gin
  jax.devices()  # the backend is up: a plan never changes the device count
  gin.clear_config()
  yield
  gin.clear_config()


def _plan(tmp_path, *flags, topology="cpu:8", gin_file=DEMO):
  """Runs protjax-plan in this process: (exit code, JSON plan or None)."""
  import gin
  gin.clear_config()  # parsed and locked by an earlier plan of the test
  out = tmp_path / "plan.json"
  out.unlink(missing_ok=True)
  with pytest.raises(SystemExit) as exit_info:
    plan.main([f"--gin_file={gin_file}", f"--topology={topology}", f"--json={out}", *flags])
  return exit_info.value.code, (json.loads(out.read_text()) if out.exists() else None)


def test_cpu8_plan_bytes_are_the_partitioners_shards(tmp_path, capsys, clean_gin):
  code, got = _plan(tmp_path, "--gin.make_partitioner.model_parallel=2",
                    "--gin.train.num_microbatches=2")
  assert code == 0
  table = capsys.readouterr().out
  assert "FITS" in table and "data 4 x model 2" in table
  # The demo's model and its partitioner, built here independently of the plan.
  model = registry.get_model("prott5", "tiny")
  shapes = {"encoder_input_tokens": (32, 128), "decoder_target_tokens": (32, 128)}
  abstract = jax.eval_shape(lambda r: model.init_variables(r, shapes), jax.random.PRNGKey(0))
  partitioner = partitioning.make_partitioner(2, "tp", devices=jax.devices()[:8])
  shardings = partitioner.param_shardings(abstract["params"], abstract["params_axes"])
  expected = sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in zip(
      jax.tree.leaves(abstract["params"]), jax.tree.leaves(shardings)))
  assert got["params_bytes"] == expected
  assert expected < partitioning.num_bytes(abstract["params"])  # tp splits some weights
  assert got["param_count"] == sum(x.size for x in jax.tree.leaves(abstract["params"]))
  assert got["batch_bytes"] == 4 * 8 * 128 * 4  # 4 features, 8 rows per replica
  assert (got["global_batch"], got["sequence_length"], got["num_microbatches"]) == (32, 128, 2)
  # The compiler holds what the partitioner laid out (less any unused input).
  held = got["params_bytes"] + got["opt_state_bytes"] + got["batch_bytes"]
  assert got["params_bytes"] < got["memory"]["argument"] <= held + 12
  assert got["memory"]["total"] > got["memory"]["temp"] > 0
  assert got["model_flops_per_step"] == pytest.approx(
      model.flops_per_example(shapes) * 32)
  assert got["mfu"] is None and got["estimated_step_seconds"] is None  # CPU: no estimate


def test_a_plan_that_cannot_fit_exits_3(tmp_path, capsys, clean_gin):
  # The embedding forward: the same verdict code, a quicker compilation.
  code, got = _plan(tmp_path, "--memory_gib=0.00001", "--embed", "--length=64", "--batch=8")
  assert code == plan.EXIT_DOES_NOT_FIT
  assert got["fits"] is False and got["memory"]["total"] > 0.00001 * 2**30
  assert "DOES NOT FIT" in capsys.readouterr().out


def test_embed_plan(tmp_path, capsys, clean_gin):
  code, got = _plan(tmp_path, "--embed", "--length=64", "--batch=8", "--dtype=float32")
  assert code == 0, capsys.readouterr().err
  assert (got["kind"], got["global_batch"], got["sequence_length"]) == ("embed", 8, 64)
  assert got["opt_state_bytes"] == 0 and got["mesh"]["shape"] == {"data": 8, "model": 1}
  config = registry.get_family("prott5").get_config("tiny")
  assert got["model_flops_per_step"] == pytest.approx(
      registry.get_family("prott5").module().encoder_flops(config, 64) * 8)


@pytest.mark.parametrize("flags, message", [
    (["--topology=v9:2x2"], "unknown topology 'v9:2x2'"),
    (["--topology=tpu-1024"], "unknown topology"),
    (["--topology=cpu:8", "--gin.make_partitioner.model_parallel=16"],
     "model_parallel=16 does not divide the 8 devices"),
    (["--topology=cpu:8", "--gin.make_partitioner.model_parallel=3"], "is not one of"),
    (["--topology=cpu:8", "--gin.DataConfig.batch_size=12"], "not divisible"),
    (["--topology=cpu:8", "--embed"], "--embed needs --batch"),
])
def test_bad_input_is_one_line(flags, message, tmp_path, capsys, clean_gin):
  with pytest.raises(SystemExit) as exit_info:
    plan.main([f"--gin_file={DEMO}", *flags])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_tpu_topology_without_libtpu_is_one_line(monkeypatch, capsys, clean_gin):
  monkeypatch.setattr(plan, "_libtpu_available", lambda: False)
  with pytest.raises(SystemExit) as exit_info:
    plan.main([f"--gin_file={DEMO}", "--topology=v3-1024"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: topology 'v3:16x32' needs libtpu to compile for TPU: "
                 "pip install -e \".[tpu]\""]


def test_topology_names():
  assert plan.parse_topology("v3-1024") == ("tpu", "v3:16x32", 0)
  assert plan.parse_topology("v4:4x4x8") == ("tpu", "v4:4x4x8", 0)
  assert plan.parse_topology("cpu:8") == ("cpu", "cpu:8", 8)
  # The chip's memory per device: v3 cores of 16 GiB, megacore chips whole.
  assert plan.CHIPS["v3"].hbm_bytes // 2 == 16 * plan.GIB
  assert plan.CHIPS["v5p"].megacore and plan.CHIPS["v5p"].hbm_bytes == 95 * plan.GIB


def test_out_of_memory_message_gives_the_figures():
  got = plan.out_of_memory_figures(TPU_OOM)
  assert got["what"] == "HLO temporaries"
  assert got["required"] == int(23.61 * 2**30) and got["available"] == int(15.48 * 2**30)
  assert "23.61G" in got["compiler_message"]
  assert plan.out_of_memory_figures("INVALID_ARGUMENT: something else") is None


@pytest.mark.parametrize("task, pack", [
    ("protjax_sample_t5", False), ("protjax_sample_bert", False),
    ("protjax_sample_electra", False), ("protjax_sample_xlnet", False),
    ("protjax_sample_txl", False)])
def test_batch_shapes_are_the_pipelines(task, pack):
  """The plan's batch (no data read) has the pipeline's features and shapes."""
  data = DataConfig(task_name=task, sequence_length=64, batch_size=4, backend="numpy",
                    source_files=SAMPLE, pack=pack)
  batch = next(iter(data.get_dataset("train")))
  assert {k: v.shape for k, v in batch.items()} == plan.batch_shapes(data)
  assert all(v.dtype == np.int32 for v in batch.values())


@pytest.mark.parametrize("demo, family, memory", [
    ("demo_protbert.gin", "protbert", False), ("demo_protalbert.gin", "protalbert", False),
    ("demo_protelectra.gin", "protelectra", False), ("demo_protxlnet.gin", "protxlnet", False),
    ("demo_prottxl.gin", "prottxl", True)])
def test_every_familys_demo_plans_on_cpu8(demo, family, memory, tmp_path, clean_gin):
  """Each family's demo step (ProtT5's above) compiles for cpu:8 from its
  objective's batch shapes; ProtTXL's memory is planned as part of the state."""
  code, got = _plan(tmp_path, gin_file=str(REPO / "gin_configs" / "runs" / demo))
  assert code == 0 and got["fits"] and got["family"] == family
  assert (got["model_state_bytes"] > 0) == memory
  assert got["memory"]["argument"] >= got["params_bytes"] + got["model_state_bytes"]


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install -e '.[tpu]')")
def test_tpu_plan_of_the_demo_on_a_v3_8(tmp_path, clean_gin):
  """XLA:TPU compiles the demo's step for a v3-8 from this CPU; a batch that
  cannot fit a core's 16 GiB is refused by the compiler: exit 3, its figures."""
  code, got = _plan(tmp_path, "--gin.make_partitioner.model_parallel=2",
                    topology="v3-8")
  assert code == 0
  assert got["mesh"]["device_kind"] == "TPU v3" and got["mesh"]["devices_per_chip"] == 2
  assert got["mesh"]["model_group_chips"] == 1  # a model pair on one chip's two cores
  assert got["memory_per_device"] == 16 * plan.GIB
  assert got["estimated_step_seconds"] > 0 and 0 < got["mfu"] < 1
  code, got = _plan(tmp_path, "--gin.DataConfig.batch_size=65536",
                    "--gin.DataConfig.sequence_length=512", topology="v3-8")
  assert code == plan.EXIT_DOES_NOT_FIT
  assert got["fits"] is False and got["memory"]["total"] > 16 * plan.GIB
  assert "memory" in got["compiler_message"].lower()
