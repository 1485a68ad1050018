"""launch/: each launcher's dry run prints exactly the command it would run.

The printed commands are parsed as the shell would (shlex), so what is
asserted is the argv the remote side gets, quoting included: a gin string
such as `'gs://bucket/run'` must reach protjax-train with its quotes.
"""
from __future__ import annotations

import os
import pathlib
import shlex
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).parent.parent / "launch"
TRAIN_FLAGS = ["--gin_file=gin_configs/runs/prott5_xl_bfd.gin",
               "--gin.train.model_dir='gs://bucket/prott5_xl_bfd'",
               "--gin.DataConfig.source_files=('gs://bucket/bfd/*.fasta.gz',)"]


def _dry_run(script: str, *args: str, **env: str) -> str:
  proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True,
                        text=True, timeout=60,
                        env=dict(os.environ, DRY_RUN="1", **env))
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def test_tpu_vm_pod_runs_the_same_command_on_every_worker():
  argv = shlex.split(_dry_run("tpu_vm_pod.sh", "my-tpu", "us-central2-b", *TRAIN_FLAGS))
  assert argv[:10] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone",
                       "us-central2-b", "--worker=all", "--command"]
  remote = argv[10]
  assert len(argv) == 11
  assert remote.startswith("cd ~/protjax && nohup python3 -m protjax.train ")
  assert remote.endswith(" > train.log 2>&1 &")
  train = remote[len("cd ~/protjax && nohup "):-len(" > train.log 2>&1 &")]
  assert shlex.split(train) == ["python3", "-m", "protjax.train", *TRAIN_FLAGS]


def test_tpu_vm_pod_setup_installs_the_tpu_extra_first():
  argv = shlex.split(_dry_run("tpu_vm_pod.sh", "t", "z", *TRAIN_FLAGS, SETUP="1",
                              REPO_DIR="/opt/protjax"))
  assert argv[10].startswith("cd /opt/protjax && python3 -m pip install -q -e '.[tpu]' "
                             "&& nohup python3 -m protjax.train ")


def test_gpu_multinode_gives_each_host_its_process_id():
  lines = _dry_run("gpu_multinode.sh", "gpu0 gpu1 gpu2", *TRAIN_FLAGS,
                   REPO_DIR="/nfs/protjax", PORT="1234").splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    ssh, host, remote = line.split(" ", 2)
    assert (ssh, host) == ("ssh", f"gpu{i}")
    # ssh hands the rest to the remote shell as one command line.
    assert remote.startswith("cd /nfs/protjax && nohup ")
    assert remote.endswith(f" > train.{i}.log 2>&1 &")
    train = remote[len("cd /nfs/protjax && nohup "):-len(f" > train.{i}.log 2>&1 &")]
    assert shlex.split(train) == [
        "python", "-m", "protjax.train", "--coordinator_address=gpu0:1234",
        "--num_processes=3", f"--process_id={i}", *TRAIN_FLAGS]


def test_gpu_slurm_runs_srun_with_the_flags():
  argv = shlex.split(_dry_run("gpu_slurm.sbatch", *TRAIN_FLAGS))
  assert argv == ["srun", "--kill-on-bad-exit=1", "python", "-m", "protjax.train",
                  *TRAIN_FLAGS]


@pytest.mark.parametrize("script, args", [("tpu_vm_pod.sh", ["only-a-name"]),
                                          ("gpu_multinode.sh", ["h0"])])
def test_launchers_without_flags_print_usage(script, args):
  proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True,
                        text=True, timeout=60, env=dict(os.environ, DRY_RUN="1"))
  assert proc.returncode == 2 and proc.stderr.startswith("usage: ")
