"""Two local processes x 4 CPU devices train like one process with 8 devices."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np

from protjax import checkpoints, optim, partitioning, trainer

import trainer_toy

TESTS = pathlib.Path(__file__).parent
REPO = TESTS.parent
STEPS = 4

# One job's worker: host 1 alone may be signalled at step 5 or given a
# wall-clock budget; the short sleep gives a notice time to reach host 0.
_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    sys.path[:0] = [{tests!r}, {repo!r}]
    from protjax import checkpoints, optim, partitioning, trainer
    import trainer_toy

    port, process_id, model_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert trainer.initialize_distributed(f"127.0.0.1:{{port}}", 2, process_id)
    import jax
    assert jax.process_count() == 2 and jax.local_device_count() == 4

    def slow_steps(step):
      time.sleep({sleep})
      if {sigterm} and process_id == 1 and step == 5:
        os.kill(os.getpid(), signal.SIGTERM)

    result = trainer.train(
        model_dir=model_dir, model=trainer_toy.ToyModel(),
        optimizer=optim.adafactor(optim.constant_schedule(0.05),
                                  min_dim_size_to_factor=8),
        train_data=trainer_toy.ToyData(), train_steps={steps},
        partitioner=partitioning.make_partitioner(2, "tp"),
        checkpoint=checkpoints.CheckpointConfig(save_every={save_every}),
        log_every={log_every}, hooks=[slow_steps],
        max_minutes={budget} if process_id == 1 else None)
    losses = {{s: m["loss"] for s, m in result.history.items()}}
    print("LOSSES " + json.dumps(losses), flush=True)
    print("RESULT " + json.dumps([result.step, result.stopped]), flush=True)
""")


def _worker(*, steps: int, save_every: int, log_every: int, sleep=0.0,
            sigterm=False, budget=None) -> str:
  return _WORKER.format(tests=str(TESTS), repo=str(REPO), steps=steps,
                        save_every=save_every, log_every=log_every,
                        sleep=sleep, sigterm=sigterm, budget=budget)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(tmp_path, worker: str, model_dir) -> list:
  """Runs `worker` as processes 0 and 1 of one job; returns their stdouts."""
  script = tmp_path / "worker.py"
  script.write_text(worker)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(script), str(port), str(i), str(model_dir)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=400)
      assert p.returncode == 0, err[-3000:]
      outputs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outputs


def _tagged_line(out: str, tag: str):
  return json.loads([l for l in out.splitlines() if l.startswith(tag)][0][len(tag):])


def test_two_processes_match_one(tmp_path):
  model_dir = tmp_path / "run"
  outputs = _run_two_processes(
      tmp_path, _worker(steps=STEPS, save_every=2, log_every=2), model_dir)
  losses = [{int(k): v for k, v in _tagged_line(out, "LOSSES ").items()}
            for out in outputs]
  assert losses[0] == losses[1]
  # Only process 0 writes logs and the console report.
  assert "step 4/4" in outputs[0] and "step 4/4" not in outputs[1]
  assert len(list((model_dir / "tensorboard").iterdir())) == 1

  # One process, 8 devices, the same (data=4, model=2) mesh and global batch.
  single = trainer.train(
      model_dir=str(tmp_path / "single"), model=trainer_toy.ToyModel(),
      optimizer=optim.adafactor(optim.constant_schedule(0.05),
                                min_dim_size_to_factor=8),
      train_data=trainer_toy.ToyData(), train_steps=STEPS,
      partitioner=partitioning.make_partitioner(2, "tp"),
      checkpoint=checkpoints.CheckpointConfig(save_every=2), log_every=2)
  assert sorted(losses[0]) == list(range(STEPS))
  for step in range(STEPS):
    np.testing.assert_allclose(losses[0][step], single.history[step]["loss"],
                               rtol=1e-5)
  # The checkpoint both processes wrote together restores in one process.
  params = checkpoints.restore_params(model_dir)
  np.testing.assert_allclose(params["wi"],
                             np.asarray(single.state.params["wi"]), rtol=1e-5,
                             atol=1e-6)


def _stop_one_host(tmp_path, *, sigterm: bool, log_every: int,
                   budget=None) -> tuple:
  """Runs 1000 steps on two hosts, stopping host 1 alone (SIGTERM at step 5
  or a wall-clock budget); checks both stopped at one step, with a
  checkpoint there, for one reason; returns (step, reason)."""
  steps = 1000
  model_dir = tmp_path / "run"
  worker = _worker(steps=steps, save_every=steps, log_every=log_every,
                   sleep=0.01, sigterm=sigterm, budget=budget)
  results = [tuple(_tagged_line(out, "RESULT "))
             for out in _run_two_processes(tmp_path, worker, model_dir)]
  assert results[0] == results[1], results
  step, reason = results[0]
  assert 1 <= step < steps
  ckpt = checkpoints.Checkpointer(model_dir)
  assert ckpt.latest_step() == step  # saved by both hosts at that step
  ckpt.close()
  return step, reason


def test_sigterm_on_one_host_stops_both_before_any_gather(tmp_path):
  # No log step (the all-gather) before the end: only jax's preemption sync
  # point can tell host 0.
  step, reason = _stop_one_host(tmp_path, sigterm=True, log_every=1000)
  assert reason == "preempted" and step >= 5


def test_one_hosts_budget_stops_both_at_a_log_step_for_the_same_reason(tmp_path):
  step, reason = _stop_one_host(tmp_path, sigterm=False, log_every=4,
                                budget=1 / 60)
  assert reason == "time_limit" and step % 4 == 0


def test_gpu_multinode_launcher_gives_each_host_its_process_id():
  out = subprocess.run(
      ["bash", str(REPO / "launch" / "gpu_multinode.sh"), "gpu0 gpu1 gpu2",
       "--gin_file=gin_configs/runs/pretrain.gin",
       "--gin.train.model_dir='/runs/a b'"],
      env=dict(os.environ, DRY_RUN="1", PORT="1234", REPO_DIR="/opt/protjax"),
      capture_output=True, text=True, check=True).stdout.splitlines()
  assert len(out) == 3
  for i, line in enumerate(out):
    assert line.startswith(f"ssh gpu{i} cd /opt/protjax && ")
    assert "--coordinator_address=gpu0:1234 --num_processes=3" in line
    assert f"--process_id={i} " in line
    assert "--gin.train.model_dir=\\'/runs/a\\ b\\'" in line  # quoted once
