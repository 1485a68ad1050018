"""The shared training loop: learning, logs, kill-and-resume, entry point, demo."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from protjax import checkpoints, optim, partitioning, train as train_cli, trainer
from protjax.errors import InputError

import trainer_toy

TESTS = pathlib.Path(__file__).parent
REPO = TESTS.parent


def _toy_train(model_dir, steps, **kwargs):
  kwargs.setdefault("partitioner", partitioning.make_partitioner(2, "tp"))
  kwargs.setdefault("checkpoint", checkpoints.CheckpointConfig(save_every=10))
  return trainer.train(
      model_dir=str(model_dir), model=trainer_toy.ToyModel(),
      optimizer=optim.adafactor(optim.inverse_sqrt_schedule(0.05, 10),
                                min_dim_size_to_factor=8),
      train_data=trainer_toy.ToyData(), train_steps=steps, **kwargs)


def test_loss_falls_and_logs_are_written(tmp_path, capsys):
  result = _toy_train(tmp_path, 30, log_every=10, num_microbatches=2,
                      eval_data=trainer_toy.ToyData(seed=7), eval_every=15,
                      eval_steps=2, peak_flops=1e9)
  losses = [result.history[s]["loss"] for s in sorted(result.history)]
  assert len(losses) == 30
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
  lines = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith("step ")]
  # The first step (the starting loss), then every log_every steps.
  assert len(lines) == 4 and lines[0].startswith("step 1/30  loss ")
  assert lines[-1].startswith("step 30/30  loss ")
  for field in ("masked_acc", "lr", "grad_norm", "ex/s", "tok/s", "ms/step",
                "MFU"):
    assert field in lines[-1]
  assert "MFU n/a" not in lines[-1]  # peak given: MFU is computed
  scalars = trainer.read_run_log(tmp_path / "tensorboard").scalars
  assert sorted(scalars["train/loss"]) == [1, 10, 20, 30]
  assert scalars["train/loss"][1] == result.history[0]["loss"]
  np.testing.assert_allclose(
      scalars["train/loss"][30],
      np.mean([result.history[s]["loss"] for s in range(20, 30)]), rtol=1e-5)
  # Interval means: steps 20..29 ran at 0.05 * sqrt(10 / step).
  np.testing.assert_allclose(scalars["train/learning_rate"][30], np.mean(
      [0.05 * np.sqrt(10 / s) for s in range(20, 30)]), rtol=1e-5)
  for tag in ("train/grad_norm", "train/examples_per_s", "train/tokens_per_s",
              "train/step_time", "train/mfu", "train/masked_residue_accuracy",
              "eval/loss"):
    assert tag in scalars, tag
  assert sorted(result.eval_history) == [15, 30]
  assert result.eval_history[30]["loss"] < result.eval_history[15]["loss"]


_KILLED_RUN = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    sys.path[:0] = [{tests!r}, {repo!r}]
    from protjax import checkpoints, optim, partitioning, trainer
    import trainer_toy

    model_dir = pathlib.Path(sys.argv[1])

    def kill_after_checkpoint(step):
      if step == 6:  # checkpoint 4 is being written in the background
        deadline = time.time() + 60
        while not (model_dir / "checkpoints" / "4").is_dir():
          assert time.time() < deadline
          time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)

    trainer.train(
        model_dir=str(model_dir), model=trainer_toy.ToyModel(),
        optimizer=optim.adafactor(optim.inverse_sqrt_schedule(0.05, 10),
                                  min_dim_size_to_factor=8),
        train_data=trainer_toy.ToyData(), train_steps=10,
        partitioner=partitioning.make_partitioner(2, "tp"),
        checkpoint=checkpoints.CheckpointConfig(save_every=4),
        hooks=[kill_after_checkpoint])
""")


def test_kill_and_resume_is_bitwise_identical(tmp_path):
  script = tmp_path / "killed_run.py"
  script.write_text(_KILLED_RUN.format(tests=str(TESTS), repo=str(REPO)))
  model_dir = tmp_path / "run"
  proc = subprocess.run([sys.executable, str(script), str(model_dir)],
                        env=dict(os.environ), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert checkpoints.Checkpointer(model_dir).latest_step() == 4
  resumed = _toy_train(model_dir, 10, checkpoint=checkpoints.CheckpointConfig(
      save_every=4))
  assert resumed.start_step == 4
  straight = _toy_train(tmp_path / "straight", 10,
                        checkpoint=checkpoints.CheckpointConfig(save_every=4))
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(
      straight.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for step in range(4, 10):
    assert resumed.history[step]["loss"] == straight.history[step]["loss"]
  # The event files keep the whole run: the killed invocation logged step 1
  # (each invocation logs its first step), the resumed one steps 5 and 10.
  # A record cut short by a kill is skipped, not misread.
  first_file = min((model_dir / "tensorboard").glob("events.out.tfevents.*"))
  with open(first_file, "ab") as f:
    f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00")
  log = trainer.read_run_log(model_dir / "tensorboard")
  assert log.start_step == 0 and len(log.invocation_seconds) == 2
  assert all(s >= 0 for s in log.invocation_seconds)
  loss = log.scalars["train/loss"]
  assert sorted(loss) == [1, 5, 10]
  assert loss[1] == pytest.approx(straight.history[0]["loss"])
  assert loss[5] == pytest.approx(resumed.history[4]["loss"])
  np.testing.assert_allclose(loss[10], np.mean(
      [straight.history[s]["loss"] for s in range(5, 10)]), rtol=1e-5)


def test_flags():
  args = train_cli.parse_flags([
      "--gin_file=a.gin", "--gin_file", "b.gin", "--gin.train.train_steps=5",
      "--gin.DataConfig.task_name", "'x_t5'", "--process_id=1"])
  assert args.gin_file == ["a.gin", "b.gin"]
  assert args.gin_bindings == ["train.train_steps=5",
                               "DataConfig.task_name='x_t5'"]
  assert args.process_id == 1
  with pytest.raises(InputError, match="--gin_file"):
    train_cli.parse_flags(["--gin.train.train_steps=5"])


@pytest.fixture
def clean_gin():
  import gin
  gin.clear_config()
  yield
  gin.clear_config()


def test_entry_point_reports_bad_gin_in_one_line(tmp_path, capsys, clean_gin):
  bad = tmp_path / "bad.gin"
  bad.write_text("train.no_such_argument = 3\n")
  with pytest.raises(SystemExit) as exit_info:
    train_cli.main([f"--gin_file={bad}"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: gin configuration")
  assert "no_such_argument" in err[0] and "bad.gin" in err[0]


@pytest.mark.parametrize("demo, family", [
    ("demo.gin", "prott5"), ("demo_protbert.gin", "protbert"),
    ("demo_protalbert.gin", "protalbert"), ("demo_protelectra.gin", "protelectra"),
    ("demo_protxlnet.gin", "protxlnet"),
    ("demo_prottxl.gin", "prottxl")])
def test_short_demo_loss_falls(tmp_path, clean_gin, demo, family):
  """Each family's demo gin, shortened: its tiny model on the bundled sample."""
  from protjax.models import registry
  model_dir = tmp_path / "demo"
  with pytest.raises(SystemExit) as exit_info:
    train_cli.main([
        f"--gin_file={REPO / 'gin_configs/runs' / demo}",
        f"--gin.train.model_dir='{model_dir}'",
        "--gin.train.train_steps=24", "--gin.train.log_every=1",
        "--gin.train.eval_every=0", "--gin.DataConfig.batch_size=16",
        "--gin.DataConfig.sequence_length=64",
        "--gin.make_partitioner.model_parallel=2",
        # The BERT families' schedule, squeezed into the 24 steps (unused by ProtT5's).
        "--gin.linear_warmup_decay.warmup_steps=2",
        "--gin.linear_warmup_decay.total_steps=24",
        "--gin.linear_warmup_decay.peak_rate=0.03"])
  assert exit_info.value.code == 0
  loss = trainer.read_run_log(model_dir / "tensorboard").scalars["train/loss"]
  assert sorted(loss) == list(range(1, 25))
  fam = registry.get_family(family)
  vocab_size = fam.vocabulary().vocab_size
  assert loss[1] > 0.9 * np.log(vocab_size)  # a fresh model guesses uniformly
  # Falls by more than the step-to-step noise (~0.02); ProtT5's falls by > 1.
  assert np.mean([loss[s] for s in range(20, 25)]) < loss[1] - 0.1
  config = (model_dir / "config.gin").read_text()
  assert "train.train_steps = 24" in config
  model_config = json.loads((model_dir / "model_config.json").read_text())
  assert model_config.pop("family") == family
  assert fam.config_from_dict(model_config) == fam.get_config("tiny")
  assert checkpoints.Checkpointer(model_dir).latest_step() == 24
  encoder = fam.encoder_params(checkpoints.restore_params(model_dir))
  assert jax.tree.leaves(encoder)


def test_gin_configs_resolve_from_any_directory(tmp_path):
  """`gin_configs/...` (and the files it includes) resolve outside the
  checkout through the installed package, without gin logging misses."""
  script = ("import gin\n"
            "from protjax import gin_setup\n"
            "gin_setup.parse_gin(['gin_configs/runs/demo.gin'], [], finalize=False)\n"
            "print(gin.query_parameter('DataConfig.task_name'),"
            " gin.query_parameter('T5Config.d_model'))\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["protjax_sample_t5", "32"]
  assert "Path not found" not in proc.stderr


@pytest.mark.parametrize("run, model_parallel, d_ff, task, batch", [
    ("pretrain.gin", 8, 2048, "bfd_t5", 2048),
    ("continue_pretrain.gin", 8, 2048, "uniref50_t5", 2048),
    ("prott5_xl_bfd.gin", 8, 16384, "bfd_t5", 4096),
    ("prott5_xl_u50.gin", 8, 16384, "uniref50_t5", 2048),
    ("prott5_xxl_bfd.gin", 32, 65536, "bfd_t5", 4096),
    ("demo.gin", 1, 64, "protjax_sample_t5", 32),
])
def test_run_files_compose(run, model_parallel, d_ff, task, batch, clean_gin):
  import gin
  from protjax import gin_setup
  gin.add_config_file_search_path(str(REPO))
  gin_setup.parse_gin([str(REPO / "gin_configs" / "runs" / run)],
                      ["train.model_dir = '/tmp/x'", "train.init_from = '/y'"])
  assert gin.query_parameter("make_partitioner.model_parallel") == (
      model_parallel)
  assert gin.query_parameter("DataConfig.task_name") == task
  assert gin.query_parameter("DataConfig.batch_size") == batch
  from protjax.models import t5
  config = gin.get_configurable(t5.T5Config)()
  assert config.d_ff == d_ff
  optimizer = gin.get_configurable(optim.adafactor)()
  base = gin.query_parameter("inverse_sqrt_schedule.base_rate")
  assert float(optimizer.schedule(0)) == pytest.approx(base)
