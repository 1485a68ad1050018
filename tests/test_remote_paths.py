"""Paths that are URLs (gs:// on TPU VMs) through protjax.files, tested on
TensorFlow's in-memory `ram://` filesystem: not local, no network, and the
same tf.io.gfile road a gs:// path takes."""
from __future__ import annotations

import gzip
import pathlib

import pytest

from protjax import checkpoints, files, train as train_cli, trainer
from protjax.data import readers
from protjax.errors import InputError

REPO = pathlib.Path(__file__).parent.parent
SAMPLE = REPO / "protjax" / "data" / "sample"


def _put(url: str, data: bytes) -> None:
  files.makedirs(url.rsplit("/", 1)[0])
  with files.open_file(url, "wb") as f:
    f.write(data)


def test_files_layer_on_a_url():
  root = "ram://files_layer"
  files.makedirs(files.join(root, "a", "b"))
  assert files.isdir(files.join(root, "a")) and not files.isfile(files.join(root, "a"))
  files.write_text_atomic(files.join(root, "a", "b", "x.txt"), "text\n")
  assert files.isfile(f"{root}/a/b/x.txt") and files.glob(f"{root}/a/*/*.txt") == [
      f"{root}/a/b/x.txt"]
  with files.open_file(f"{root}/a/b/x.txt", "r") as f:
    assert f.read() == "text\n"
  with pytest.raises(InputError, match="output folder does not exist"):
    files.write_text_atomic(f"{root}/missing/x.txt", "text")
  files.rmtree(root)
  assert not files.exists(f"{root}/a/b/x.txt")
  assert files.join("gs://bucket/", "run", "config.gin") == "gs://bucket/run/config.gin"


def test_fasta_shards_and_globs_read_through_a_url():
  root = "ram://fasta_read"
  _put(f"{root}/a.fasta", b">p1\nMKV\n")
  _put(f"{root}/b.fasta.gz", gzip.compress(b">p2\nMKVL\n"))
  _put(f"{root}/c.fasta.gz", gzip.compress(b">p3\nMKVLA\n")[:-8])
  found = readers.resolve_files([f"{root}/*.fasta*"], "test")
  assert found == [f"{root}/a.fasta", f"{root}/b.fasta.gz", f"{root}/c.fasta.gz"]
  assert list(readers.read_fasta(found[0])) == [("p1", "MKV")]
  assert list(readers.read_fasta(found[1])) == [("p2", "MKVL")]
  with pytest.raises(InputError, match="c.fasta.gz: gzip data is truncated"):
    list(readers.read_fasta(found[2]))
  with pytest.raises(InputError, match="matches no file"):
    readers.resolve_files([f"{root}/none*.fasta"], "test")


@pytest.fixture
def clean_gin():
  import gin
  gin.clear_config()
  yield
  gin.clear_config()


def test_a_run_reads_its_fasta_and_writes_its_files_on_a_url(tmp_path, monkeypatch,
                                                              clean_gin):
  """The demo trains from FASTA shards on a URL, and its config.gin,
  model_config.json and TensorBoard events land in a model_dir on a URL.
  (Checkpoints are orbax's, whose gs:// road is TensorStore's own: here they
  go to a local folder, as no TensorStore driver knows ram://.)"""
  data, model_dir = "ram://run_data", "ram://runs/demo"
  for path in sorted(SAMPLE.glob("*.fasta")):
    _put(f"{data}/{path.name}", path.read_bytes())
  local = tmp_path / "checkpoints"
  monkeypatch.setattr(checkpoints, "checkpoint_dir", lambda d: (
      checkpoints.epath.Path(local) if d == model_dir else pytest.fail(d)))
  with pytest.raises(SystemExit) as exit_info:
    train_cli.main([
        f"--gin_file={REPO / 'gin_configs/runs/demo.gin'}",
        f"--gin.train.model_dir='{model_dir}'",
        f"--gin.DataConfig.source_files='{data}/*.fasta'",
        "--gin.train.train_steps=3", "--gin.train.log_every=1", "--gin.train.eval_every=0",
        "--gin.DataConfig.batch_size=8", "--gin.DataConfig.sequence_length=64"])
  assert exit_info.value.code == 0
  with files.open_file(f"{model_dir}/config.gin", "r") as f:
    assert f"DataConfig.source_files = '{data}/*.fasta'" in f.read()
  # What protjax-export / protjax-embed read first from a run in a bucket.
  from protjax import export, hf
  assert hf.read_json(f"{model_dir}/model_config.json")["family"] == "prott5"
  files.makedirs(f"{model_dir}/checkpoints")  # (orbax's own folder: local here)
  assert export.is_training_run(model_dir)
  loss = trainer.read_run_log(f"{model_dir}/tensorboard").scalars["train/loss"]
  assert sorted(loss) == [1, 2, 3]
  assert checkpoints.Checkpointer(model_dir).latest_step() == 3
