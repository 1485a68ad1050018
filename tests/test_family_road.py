"""The road after the trainer, the same for every family: export, import, embed.

Each test is parametrised over the families (`protjax.models.registry`). The
Hugging Face side is transformers' own PyTorch code on CPU in float32; CLI
behaviour is tested through the CLIs in subprocesses, as a user runs them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from protjax import embed, embeddings_io, export
from protjax.models import registry

from helpers import batch_shapes, rel_error

FAMILIES = tuple(registry.FAMILIES)
SEQUENCES = ["MGCMKSKQTFPFPTIYEGEKQHESEEPFMPEERCLPRMASPVNVKEEVKEPPGTNTVILE",
             "MPMKSLRNDHGTLKAMIGSDFNELTIAAKNLATHAF", "MNWTAATCWALL"]
TOLERANCE = 1e-5


def cli(entry_point, *args, timeout=120, umask=None):
  """A console script (`module:function`, as setup.py names it) in a subprocess,
  as a user runs it: (exit code, stdout, stderr)."""
  module, function = entry_point.split(":")
  proc = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {function}; "
                         f"sys.argv[0] = 'protjax'; {function}()", *map(str, args)],
                        capture_output=True, text=True, timeout=timeout,
                        preexec_fn=None if umask is None else lambda: os.umask(umask))
  return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request):
  """(family, config, full params): a tiny model with every parameter random
  (norm scales and biases too, so a swapped or dropped one would show)."""
  fam = registry.get_family(request.param)
  config = fam.get_config("tiny")
  model = registry.get_model(fam.name, config)
  params = model.init_variables(jax.random.PRNGKey(0), batch_shapes(fam))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(
      lambda x: (np.asarray(x) + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), params)
  return fam, config, params


@pytest.mark.parametrize("kind", ["encoder", "full"])
def test_export_import_export_is_byte_identical(trained, kind, tmp_path):
  fam, config, params = trained
  kind = fam.full_kind if kind == "full" else kind
  first = export.export_hf(params, config, tmp_path / "a", kind=kind)
  model = export.import_hf(first)
  assert (model.family, model.kind, model.config) == (fam, kind, config)
  second = export.export_hf(model.params, model.config, tmp_path / "b", kind=kind,
                            vocabulary=model.vocabulary)
  assert sorted(os.listdir(first)) == sorted(os.listdir(second))
  for name in os.listdir(first):
    with open(os.path.join(first, name), "rb") as a, open(os.path.join(second, name), "rb") as b:
      assert a.read() == b.read(), name
  # And through params checkpoints: the same tree comes back.
  ckpt = export.save_params_checkpoint(tmp_path / "c", model.params, model.config, kind,
                                       vocabulary=model.vocabulary)
  back = export.load_model(ckpt)
  assert (back.family, back.kind, back.vocabulary) == (fam, kind, model.vocabulary)
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(model.params)):
    np.testing.assert_array_equal(a, b)


def test_transformers_loads_the_export_and_reproduces_protjax_embed(trained, tmp_path):
  """`BertModel` / `AlbertModel` / `T5EncoderModel.from_pretrained` and
  `AutoTokenizer` on the export give protjax-embed's per-residue vectors."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  fam, config, params = trained
  out = export.export_hf(params, config, tmp_path / "hf")
  architecture = json.load(open(os.path.join(out, "config.json")))["architectures"][0]
  if not hasattr(transformers, architecture):
    # ProtTXL: transformers 5 has no Transformer-XL; test_transfo_xl checks the
    # import against transformers 4.34.1's outputs instead.
    pytest.skip(f"transformers {transformers.__version__} has no {architecture}")
  hf = getattr(transformers, architecture).from_pretrained(out).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  embedder = embed.Embedder(fam.encoder_params(params), config, attention_impl="einsum")
  first = len(embedder.vocab.prefix_ids)
  for seq, mine in zip(SEQUENCES, embedder.embed_sequences(SEQUENCES)):
    ids = tokenizer(" ".join(seq), return_tensors="pt")
    np.testing.assert_array_equal(ids["input_ids"][0].numpy(), embedder.vocab.frame(seq))
    with torch.no_grad():
      theirs = hf(**ids).last_hidden_state[0, first:first + len(seq)].numpy()
    assert rel_error(mine, theirs) < TOLERANCE


@pytest.fixture(scope="module")
def alphabetical_bert(tmp_path_factory):
  """A seeded transformers BertModel whose vocab.txt is five specials then the
  20 residues alphabetically (25 ids), saved as a user would find it."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("ACDEFGHIKLMNPQRSTVWY")
  torch.manual_seed(0)
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=25, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, max_position_embeddings=512), add_pooling_layer=False).eval()
  directory = tmp_path_factory.mktemp("bert25") / "model"
  model.save_pretrained(directory)
  (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens))
  return directory, model


def test_a_bert_with_another_residue_order_embeds_as_transformers_does(alphabetical_bert,
                                                                       tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  directory, model = alphabetical_bert
  fasta = tmp_path / "in.fasta"
  fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(SEQUENCES)))
  out = tmp_path / "res.h5"
  code, _, err = cli("protjax.embed:main", "--model", directory, "--fasta", fasta,
                     "--per_residue", out, "--attention_impl", "einsum", "--no_progress")
  assert code == 0, err
  tokenizer = transformers.BertTokenizer.from_pretrained(directory, do_lower_case=False)
  with embeddings_io.EmbeddingFile(out) as f:
    for i, seq in enumerate(SEQUENCES):
      ids = tokenizer(" ".join(seq), return_tensors="pt")
      assert ids["input_ids"][0, 1].item() == "ACDEFGHIKLMNPQRSTVWY".index(seq[0]) + 5
      with torch.no_grad():
        theirs = model(**ids).last_hidden_state[0, 1:-1].numpy()
      assert rel_error(f[f"p{i}"], theirs) < TOLERANCE


@pytest.mark.parametrize("case", [
    "t5_config_bert_weights", "bert_config_t5_weights", "missing_hidden_size",
    "unknown_position_embedding_type", "vocabulary_without_residues",
    "params_checkpoint_unknown_field"])
def test_import_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
  """What a user may point protjax-import at by mistake: one line naming the
  file and the problem, exit 2, no output directory."""
  bert = registry.get_family("protbert")
  t5 = registry.get_family("prott5")
  bert_dir = export.export_hf(*_random(bert), tmp_path / "bert")
  t5_dir = export.export_hf(*_random(t5), tmp_path / "t5")
  config_path = lambda d: os.path.join(d, "config.json")
  edit = lambda d, **kv: json.dump(dict(json.load(open(config_path(d))), **kv),
                                   open(config_path(d), "w"))
  target, message = {
      # The tokenizer files disagree with config.json before any tensor is read.
      "t5_config_bert_weights": (bert_dir, "the tokenizer has 30 tokens but the model's "
                                           "vocab_size is 128"),
      "bert_config_t5_weights": (t5_dir, "the tokenizer has 128 tokens but the model's "
                                         "vocab_size is 30"),
      "missing_hidden_size": (bert_dir, "'hidden_size'"),
      "unknown_position_embedding_type": (bert_dir, "'position_embedding_type'"),
      "vocabulary_without_residues": (bert_dir, "no token for residue"),
      "params_checkpoint_unknown_field": (None, "unknown BertConfig field 'hidden_sise'"),
  }[case]
  if case == "t5_config_bert_weights":
    os.replace(config_path(t5_dir), config_path(bert_dir))
  elif case == "bert_config_t5_weights":
    os.replace(config_path(bert_dir), config_path(t5_dir))
  elif case == "missing_hidden_size":
    hf = json.load(open(config_path(bert_dir)))
    del hf["hidden_size"]
    json.dump(hf, open(config_path(bert_dir), "w"))
  elif case == "unknown_position_embedding_type":
    edit(bert_dir, position_embedding_type="relative_key")
  elif case == "vocabulary_without_residues":
    with open(os.path.join(bert_dir, "vocab.txt"), "w") as f:
      f.write("".join(f"[unused{i}]\n" for i in range(30)))
  else:
    target = export.save_params_checkpoint(tmp_path / "ckpt", *_random(bert))
    edit(target, hidden_sise=3)
  out = tmp_path / "out"
  code, _, err = cli("protjax.export:import_main", target, out)
  assert code == 2, err
  assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
  assert message in err
  assert not out.exists() and not list(tmp_path.glob("out.*"))


def _random(fam):
  config = fam.get_config("tiny")
  params = registry.get_model(fam.name, config).init_variables(
      jax.random.PRNGKey(0), batch_shapes(fam))["params"]
  return jax.tree.map(np.asarray, params), config


def test_exports_and_imports_honour_the_umask(tmp_path):
  """Other users of a shared machine can read what protjax-export and
  protjax-import write when the umask lets them (it was 0700 / 0600)."""
  params, config = _random(registry.get_family("protbert"))
  src = export.save_params_checkpoint(tmp_path / "src", params, config)
  for umask, folder_mode, file_mode in ((0o022, 0o755, 0o644), (0o027, 0o750, 0o640)):
    hf_dir, imported = tmp_path / f"hf{umask:o}", tmp_path / f"imported{umask:o}"
    code, _, err = cli("protjax.export:export_main", "--params_checkpoint", src, "--output",
                       hf_dir, "--format", "hf", umask=umask)
    assert code == 0, err
    code, _, err = cli("protjax.export:import_main", hf_dir, imported, umask=umask)
    assert code == 0, err
    assert os.stat(hf_dir).st_mode & 0o777 == folder_mode
    assert os.stat(hf_dir / "model.safetensors").st_mode & 0o777 == file_mode
    assert os.stat(imported).st_mode & 0o777 == folder_mode
    assert os.stat(imported / "config.json").st_mode & 0o777 == file_mode
