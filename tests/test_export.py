"""Export / import files: params checkpoints, HF directories, round trips, CLIs, bad input."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from flax import traverse_util
import pytest
from safetensors.numpy import load_file, save_file

from protjax import export
from protjax.hf import t5 as hf_t5
from protjax.errors import InputError
from protjax.models import t5
from protjax.models.t5 import get_config


def flatten(tree):
  """`{"a/b/c": leaf}` of a nested params dict (leaves unchanged)."""
  return traverse_util.flatten_dict(tree, sep="/")


def assert_trees_equal(a, b):
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  fa = {k: np.asarray(v) for k, v in fa.items()}
  fb = {k: np.asarray(v) for k, v in fb.items()}
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.fixture(scope="module")
def config():
  return get_config("tiny")


@pytest.fixture(scope="module")
def params(config):
  """Random full (encoder-decoder) params of the tiny config, float32 numpy."""
  rng = np.random.default_rng(0)
  state = {k: rng.standard_normal(s).astype(np.float32)
           for k, s in hf_t5.expected_hf_shapes(config, "encoder_decoder").items()}
  return hf_t5.from_hf_state_dict(state, config, "encoder_decoder")


def leftovers(parent, name):
  return [f for f in os.listdir(parent) if f.startswith(name + ".")]


# --- params checkpoints ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["encoder", "encoder_decoder"])
def test_params_checkpoint_round_trip(tmp_path, params, config, kind):
  out = export.save_params_checkpoint(tmp_path / "ckpt", params, config, kind)
  meta = json.load(open(os.path.join(out, "config.json")))
  assert (meta["family"], meta["kind"], meta["d_model"]) == ("prott5", kind, 32)
  model = export.load_params_checkpoint(out)
  loaded, loaded_config, loaded_kind = model.params, model.config, model.kind
  assert loaded_kind == kind and loaded_config == config
  want = params if kind == "encoder_decoder" else t5.encoder_params(params)
  assert_trees_equal(loaded, want)
  assert all(isinstance(v, np.ndarray) for v in flatten(loaded).values())
  assert leftovers(tmp_path, "ckpt") == []


def test_params_checkpoint_refuses_to_overwrite(tmp_path, params, config):
  out = tmp_path / "ckpt"
  export.save_params_checkpoint(out, params, config)
  with pytest.raises(InputError, match="output directory exists"):
    export.save_params_checkpoint(out, params, config)
  shifted = {"token_embedder": {"embedding": params["token_embedder"]["embedding"] + 1},
             "encoder": params["encoder"]}
  export.save_params_checkpoint(out, shifted, config, overwrite=True)
  model = export.load_params_checkpoint(out)
  loaded = model.params
  np.testing.assert_array_equal(loaded["token_embedder"]["embedding"],
                                shifted["token_embedder"]["embedding"])
  assert leftovers(tmp_path, "ckpt") == []


def test_failed_export_leaves_nothing(tmp_path, params, config, monkeypatch):
  def broken(directory, *_):
    open(os.path.join(directory, "tokenizer.json"), "w").write("{")  # half-written
    raise OSError("disk full")
  monkeypatch.setattr(export, "write_tokenizer", broken)
  with pytest.raises(OSError, match="disk full"):
    export.export_hf(params, config, tmp_path / "hf")
  assert os.listdir(tmp_path) == []
  # An existing export survives a failed overwrite untouched.
  monkeypatch.undo()
  export.export_hf(params, config, tmp_path / "hf")
  before = open(tmp_path / "hf" / "model.safetensors", "rb").read()
  monkeypatch.setattr(export, "write_tokenizer", broken)
  with pytest.raises(OSError):
    export.export_hf(params, config, tmp_path / "hf", "float16", overwrite=True)
  assert open(tmp_path / "hf" / "model.safetensors", "rb").read() == before
  assert os.listdir(tmp_path) == ["hf"]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(family="protgpt"), "config key 'family' is 'protgpt'"),
    (lambda m: m.update(family="protbert"), "unknown BertConfig field 'd_ff'"),
    (lambda m: m.update(kind="decoder"), "config key 'kind' is 'decoder'"),
    (lambda m: m.update(d_modle=3), "unknown T5Config field 'd_modle'"),
])
def test_bad_params_checkpoint_config_names_the_key(tmp_path, params, config, edit, message):
  out = export.save_params_checkpoint(tmp_path / "ckpt", params, config)
  path = os.path.join(out, "config.json")
  meta = json.load(open(path))
  edit(meta)
  json.dump(meta, open(path, "w"))
  with pytest.raises(InputError, match=message) as e:
    export.load_params_checkpoint(out)
  assert path in str(e.value)


# --- Hugging Face directories ---------------------------------------------------
def read_tensors(directory):
  return load_file(os.path.join(directory, "model.safetensors"))


@pytest.mark.parametrize("kind", ["encoder", "encoder_decoder"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_import_export_is_byte_identical(tmp_path, params, config, dtype, kind):
  first = export.export_hf(params, config, tmp_path / "a", dtype, kind=kind)
  hf = json.load(open(os.path.join(first, "config.json")))
  assert hf["architectures"] == [{"encoder": "T5EncoderModel",
                                  "encoder_decoder": "T5ForConditionalGeneration"}[kind]]
  assert hf["torch_dtype"] == hf["dtype"] == dtype
  assert (hf["feed_forward_proj"], hf["is_gated_act"], hf["tie_word_embeddings"]) == (
      "relu", False, True)
  tensors = read_tensors(first)
  assert all(t.dtype == np.dtype(dtype) for t in tensors.values())
  assert "shared.weight" in tensors and "lm_head.weight" not in tensors
  assert any(k.startswith("decoder.") for k in tensors) == (kind == "encoder_decoder")

  model = export.import_hf(first)

  imported, imported_config, imported_kind = model.params, model.config, model.kind
  assert imported_kind == kind
  assert dataclasses.replace(imported_config, dropout_rate=config.dropout_rate) == config
  # float16 export: the imported params are the float16-rounded originals.
  want = params if kind == "encoder_decoder" else t5.encoder_params(params)
  rounded = {k: v.astype(dtype).astype(np.float32) for k, v in flatten(want).items()}
  got = flatten(imported)
  assert sorted(got) == sorted(rounded)
  for k in got:
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], rounded[k], err_msg=k)
  if dtype == "float16":
    assert any(not np.array_equal(rounded[k], flatten(want)[k]) for k in rounded)

  second = export.export_hf(imported, imported_config, tmp_path / "b", dtype, kind=kind)
  t1, t2 = tensors, read_tensors(second)
  assert sorted(t1) == sorted(t2)
  for k in t1:
    assert t1[k].dtype == t2[k].dtype and t1[k].tobytes() == t2[k].tobytes(), k
  for name in ("model.safetensors", "config.json", "tokenizer.json"):
    assert open(os.path.join(first, name), "rb").read() == open(
        os.path.join(second, name), "rb").read(), name


def test_import_refuses_pickle(tmp_path):
  d = tmp_path / "hf"
  d.mkdir()
  json.dump(hf_t5.hf_config(get_config("tiny"), "encoder"), open(d / "config.json", "w"))
  (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
  with pytest.raises(InputError, match="only pytorch_model.bin found: pickle files are not "
                     "loaded.*safe_serialization=True"):
    export.import_hf(d)


def test_import_names_missing_tensor_and_bad_config(tmp_path, params, config):
  out = export.export_hf(params, config, tmp_path / "hf")
  tensors = read_tensors(out)
  del tensors["encoder.block.1.layer.0.SelfAttention.v.weight"]
  save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(InputError, match="model.safetensors: missing tensor "
                     "'encoder.block.1.layer.0.SelfAttention.v.weight'"):
    export.import_hf(out)
  hf = json.load(open(os.path.join(out, "config.json")))
  hf["feed_forward_proj"] = "gated-gelu"
  json.dump(hf, open(os.path.join(out, "config.json"), "w"))
  with pytest.raises(InputError, match="config.json: config key 'feed_forward_proj'"):
    export.import_hf(out)
  # A config whose sizes disagree with the tensors: named by the tensor.
  hf["feed_forward_proj"], hf["d_ff"] = "relu", 128
  json.dump(hf, open(os.path.join(out, "config.json"), "w"))
  with pytest.raises(InputError, match="'encoder.block.0.layer.1.DenseReluDense.wi.weight' "
                     r"has shape \[64, 32\], expected \[128, 32\]"):
    export.import_hf(out)


def test_sharded_safetensors_import(tmp_path, params, config):
  out = export.export_hf(params, config, tmp_path / "hf", kind="encoder_decoder")
  tensors = read_tensors(out)
  os.remove(os.path.join(out, "model.safetensors"))
  keys = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": keys[::2],
            "model-00002-of-00002.safetensors": keys[1::2]}
  for name, names in shards.items():
    save_file({k: tensors[k] for k in names}, os.path.join(out, name), metadata={"format": "pt"})
  json.dump({"weight_map": {k: n for n, ks in shards.items() for k in ks}},
            open(os.path.join(out, "model.safetensors.index.json"), "w"))
  model = export.import_hf(out)
  imported, kind = model.params, model.kind
  assert kind == "encoder_decoder"
  assert_trees_equal(imported, params)


# --- CLIs ---------------------------------------------------------------------------
def run_cli(main, argv):
  with pytest.raises(SystemExit) as e:
    main(argv)
  return e.value.code


def test_cli_params_to_hf_to_params(tmp_path, params, config, capsys):
  src = export.save_params_checkpoint(tmp_path / "src", params, config, "encoder_decoder")
  assert run_cli(export.export_main, ["--params_checkpoint", src, "--output",
                                      str(tmp_path / "hf"), "--format", "hf",
                                      "--full"]) == 0
  assert run_cli(export.import_main, [str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
  model = export.load_params_checkpoint(tmp_path / "back")
  back, kind = model.params, model.kind
  assert kind == "encoder_decoder" and model.config == config
  assert_trees_equal(back, params)
  # Encoder-only params export (the embedder's input), then the encoder of a full HF model.
  assert run_cli(export.export_main, ["--params_checkpoint", src, "--output",
                                      str(tmp_path / "enc")]) == 0
  model = export.load_params_checkpoint(tmp_path / "enc")
  enc, kind = model.params, model.kind
  assert kind == "encoder" and sorted(enc) == ["encoder", "token_embedder"]
  assert run_cli(export.import_main, [str(tmp_path / "hf"), str(tmp_path / "enc2"),
                                      "--encoder_only"]) == 0
  model = export.load_params_checkpoint(tmp_path / "enc2")
  enc2, kind = model.params, model.kind
  assert kind == "encoder"
  assert_trees_equal(enc2, enc)
  # Bad input: one line on stderr, exit 2, nothing written.
  capsys.readouterr()
  assert run_cli(export.export_main, ["--params_checkpoint", src, "--output",
                                      str(tmp_path / "hf")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "output directory exists" in err and err.count("\n") == 1
  assert run_cli(export.import_main, [str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
  assert "directory not found" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "x")


def test_cli_exports_from_training_model_dir(tmp_path, params, config):
  checkpoints = pytest.importorskip("protjax.checkpoints")
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  # As protjax.trainer writes them: model_config.json and orbax checkpoints.
  (model_dir / "model_config.json").write_text(json.dumps(dataclasses.asdict(config)))
  ckpt = checkpoints.Checkpointer(model_dir, checkpoints.CheckpointConfig(async_save=False))
  later = {**params, "token_embedder": {"embedding": params["token_embedder"]["embedding"] * 2}}
  ckpt.save(10, params, {"count": np.zeros((), np.int32)}, {}, force=True)
  ckpt.save(20, later, {"count": np.ones((), np.int32)}, {}, force=True)
  ckpt.close()
  for step, want in ((None, later), (10, params)):
    out = tmp_path / f"hf{step}"
    argv = ["--model_dir", str(model_dir), "--output", str(out), "--format", "hf",
            "--dtype", "float16"]
    assert run_cli(export.export_main, argv + ([] if step is None else
                                               ["--step", str(step)])) == 0
    model = export.import_hf(out)
    imported, kind = model.params, model.kind
    assert kind == "encoder"
    np.testing.assert_array_equal(imported["token_embedder"]["embedding"],
                                  want["token_embedder"]["embedding"].astype(np.float16)
                                  .astype(np.float32))
  assert run_cli(export.export_main, ["--model_dir", str(tmp_path), "--output",
                                      str(tmp_path / "none")]) == 2


def test_import_hf_recognises_a_params_checkpoint(tmp_path, params, config):
  """The embedder hands any model directory to import_hf; ours has a config.json too."""
  out = export.save_params_checkpoint(tmp_path / "ckpt", params, config)
  model = export.import_hf(out)
  loaded, loaded_config, kind = model.params, model.config, model.kind
  assert kind == "encoder" and loaded_config == config
  assert_trees_equal(loaded, t5.encoder_params(params))


def test_cli_help_describes_the_formats(capsys):
  assert run_cli(export.export_main, ["--help"]) == 0
  text = capsys.readouterr().out
  for word in ("--model_dir", "--params_checkpoint", "--format", "float16", "--full"):
    assert word in text
  assert run_cli(export.import_main, ["--help"]) == 0
  assert "never pickle" in " ".join(capsys.readouterr().out.split())  # across a wrapped line


def test_params_checkpoint_from_and_to_sharded_jax_arrays(tmp_path, params, config):
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()[:2]), ("model",))
  sharded = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(
      mesh, PartitionSpec("model") if x.shape[0] % 2 == 0 else PartitionSpec())),
      t5.encoder_params(params))
  out = export.save_params_checkpoint(tmp_path / "ckpt", sharded, config)
  model = export.load_params_checkpoint(out)
  loaded = model.params
  assert_trees_equal(loaded, t5.encoder_params(params))
  # With a sharded abstract target the arrays come back on the devices.
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        sharded)
  model = export.load_params_checkpoint(out, target=target)
  on_device = model.params
  emb = on_device["token_embedder"]["embedding"]
  assert isinstance(emb, jax.Array) and emb.sharding == sharded["token_embedder"][
      "embedding"].sharding
  assert_trees_equal(jax.tree.map(np.asarray, on_device), t5.encoder_params(params))
