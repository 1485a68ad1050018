"""ProtElectra: parity with transformers' ELECTRA, parameter counts, the
replaced-token-detection objective, its gin files, export and bad input.

The family-neutral behaviour (resume, sharding, export -> import -> export,
embedding through transformers) is tested with every family in
test_families.py and test_family_road.py.
"""
from __future__ import annotations

import json
import os
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax import export, partitioning
from protjax.errors import InputError
from protjax.hf import electra as hf_electra
from protjax.models import bert, electra, registry

from helpers import adam_fit, bert_tokens, rel_error

SEQUENCES = ["MGCMKSKQTFPFPTIYEGEKQHESEEPFMPEERCLPRMASPVNVKEEVKEPPGTNTVILE",
             "MPMKSLRNDHGTLKAMIGSDFNELTIAAKNLATHAF", "MNWTAATCWALL"]
TOLERANCE = 1e-5
# E differs from both hidden sizes, so both models project their tables.
PARITY = dict(embedding_size=24, num_layers=1, generator_num_layers=1)


def tiny(**overrides):
  return electra.get_config("protelectra_tiny", **overrides)


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


# --------------------------------------------------------------------------- parity

@pytest.fixture(scope="module")
def reference():
  """Seeded transformers ElectraForPreTraining and ElectraForMaskedLM (float32,
  eval, norms and biases off 1 / 0) on SEQUENCES: config, state dicts, outputs."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = tiny(**PARITY)
  out = {"config": config}
  tokens = bert_tokens(SEQUENCES)
  ids, mask = torch.from_numpy(tokens).long(), torch.from_numpy(tokens != 0).long()
  for kind, cls in (("discriminator", transformers.ElectraForPreTraining),
                    ("generator", transformers.ElectraForMaskedLM)):
    fields = hf_electra.hf_config(config, kind)
    fields.pop("torch_dtype")
    hf_cfg = transformers.ElectraConfig(**fields)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(hf_cfg)
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "LayerNorm" in name and name.endswith("weight"):
          p.uniform_(0.5, 1.5)
        elif name.endswith("bias"):
          p.uniform_(-0.1, 0.1)
    model.eval()
    with torch.no_grad():
      logits = model(input_ids=ids, attention_mask=mask).logits.numpy()
      hidden = model.electra(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    out[kind] = ({k: v.numpy().copy() for k, v in model.state_dict().items()}, logits, hidden)
  return out


def test_imported_weights_give_hf_logits_and_hidden_states(reference):
  config, tokens = reference["config"], bert_tokens(SEQUENCES)
  keep = tokens != 0
  disc_state, disc_logits, disc_hidden = reference["discriminator"]
  gen_state, gen_logits, gen_hidden = reference["generator"]
  disc = hf_electra.from_hf_state_dict(disc_state, config, path="model.safetensors")
  gen = hf_electra.from_hf_state_dict(gen_state, config)
  assert sorted(disc) == ["discriminator_head", "embeddings", "embeddings_project", "encoder"]
  assert sorted(gen) == ["embeddings", "generator"]

  def run(d, g, t):  # one compilation: both heads and the embedding module
    logits, hidden = electra.ElectraForPreTraining(config).apply({"params": d}, t,
                                                                 return_hidden=True)
    embedded = electra.ElectraEncoder(config).apply({"params": electra.encoder_params(d)}, t)
    return logits, hidden, embedded, electra.ElectraForMaskedLM(config).apply(
        {"params": g}, t, return_hidden=True)

  logits, hidden, embedded, (mlm_logits, mlm_hidden) = jax.tree.map(
      np.asarray, jax.jit(run)(disc, gen, tokens))
  assert logits.shape == tokens.shape and mlm_logits.shape == tokens.shape + (30,)
  errors = {"discriminator logits": rel_error(logits[keep], disc_logits[keep]),
            "discriminator hidden": rel_error(hidden[keep], disc_hidden[keep]),
            "embedded": rel_error(embedded[keep], disc_hidden[keep]),
            "generator logits": rel_error(mlm_logits[keep], gen_logits[keep]),
            "generator hidden": rel_error(mlm_hidden[keep], gen_hidden[keep])}
  print("relative errors vs transformers:", errors)
  assert max(errors.values()) < TOLERANCE, errors


def test_exports_load_in_transformers_and_map_back_exactly(reference, tmp_path):
  """What export writes is what save_pretrained writes (no missing, unexpected
  or tied tensors), and the mapping is exact both ways, for each kind."""
  transformers = pytest.importorskip("transformers")
  from safetensors.numpy import save_file
  config = reference["config"]
  trees = {"discriminator": hf_electra.from_hf_state_dict(reference["discriminator"][0], config),
           "generator": hf_electra.from_hf_state_dict(reference["generator"][0], config)}
  trees["encoder"] = electra.encoder_params(trees["discriminator"])
  saved = {kind: {k: v for k, v in reference[kind][0].items() if k != "generator_lm_head.weight"}
           for kind in ("discriminator", "generator")}
  for kind, params in trees.items():
    state = hf_electra.to_hf_state_dict(params, config, kind=kind)
    assert hf_electra.expected_hf_shapes(config, kind) == {k: v.shape for k, v in state.items()}
    if kind in saved:
      assert sorted(state) == sorted(saved[kind])
      assert all(state[k].tobytes() == saved[kind][k].tobytes() for k in state), kind
    out = tmp_path / kind
    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_electra.hf_config(config, kind)))
    model, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True) if (
        kind == "encoder") else getattr(transformers, hf_electra.hf_config(config, kind)[
            "architectures"][0]).from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    assert type(model).__name__ == hf_electra.hf_config(config, kind)["architectures"][0]
    hf = json.loads((out / "config.json").read_text())
    assert hf_electra.config_from_hf(hf) == config and hf_electra.kind_of(hf, []) == kind


# --------------------------------------------------------------------------- sizes

def test_table_2_parameter_counts_without_allocating():
  before = {id(a) for a in jax.live_arrays()}
  c = electra.get_config("protelectra_paper")
  assert (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size,
          c.max_position_embeddings, c.embedding_size) == (1024, 30, 16, 4096, 40000, 1024)
  assert (c.generator_hidden_size, c.generator_num_layers, c.generator_num_heads,
          c.generator_intermediate_size) == (256, 30, 4, 1024)
  counts = electra.param_counts(c)
  # transformers' ElectraForPreTraining / ElectraForMaskedLM of these sizes.
  assert counts["discriminator"] == 419_932_161
  assert counts["generator"] == 65_215_262
  # ProtBert's encoder exactly; the head: dense 1024 x 1024 + 1024, then 1024 + 1.
  assert counts["encoder"] == 418_881_536 == bert.param_count(bert.get_config("protbert_paper"))[1]
  assert counts["discriminator"] == counts["encoder"] + 1024 * 1024 + 1024 + 1024 + 1
  # Training holds the shared tables (40,996,816) once.
  tables = (30 + 40000 + 2) * 1024 + 2 * 1024
  assert counts["training"] == counts["discriminator"] + counts["generator"] - tables
  assert electra.param_count(c) == (444_152_607, 418_881_536)
  new = [a for a in jax.live_arrays() if id(a) not in before]
  assert sum(a.size for a in new) < 1_000_000


def test_every_gin_file_loads_and_states_its_count():
  for name in electra.CONFIG_NAMES:
    c = electra.get_config(name)
    n = electra.param_counts(c)
    assert (c.vocab_size, c.max_position_embeddings, c.dropout_rate) == (30, 40000, 0.0)
    header = (electra.GIN_DIR / f"{name}.gin").read_text().splitlines()[1]
    assert header == (f"# {n['training']:,} parameters: discriminator {n['discriminator']:,}, "
                      f"generator {n['generator']:,}, encoder {n['encoder']:,}."), name
  with pytest.raises(InputError, match="generator_hidden_size 16 is not divisible by "
                                       "generator_num_heads 3"):
    electra.get_config("protelectra_tiny", generator_num_heads=3)
  with pytest.raises(InputError, match="ElectraConfig.hidden_size 32 is not divisible by "
                                       "num_heads 3"):
    electra.get_config("protelectra_tiny", num_heads=3)
  with pytest.raises(InputError, match="discriminator_weight must be positive"):
    electra.get_config("protelectra_tiny", discriminator_weight=0.0)


def test_parameter_tree_axes_and_the_embedding_module():
  c = tiny(embedding_size=24)
  variables = jax.eval_shape(lambda r: electra.ElectraRTDModel(c).init_variables(
      r, {"encoder_input_tokens": (2, 8)}), jax.random.PRNGKey(0))
  flat = _flat(variables["params"])
  logical = _flat(flax.linen.partitioning.get_axis_names(variables["params_axes"]))
  assert set(flat) == set(logical)
  head = {k: (flat[k].shape, tuple(logical[k])) for k in flat if "discriminator_head" in k}
  assert head == {"discriminator_head/dense/kernel": ((32, 32), ("embed", "mlp")),
                  "discriminator_head/dense/bias": ((32,), ("mlp",)),
                  "discriminator_head/dense_prediction/kernel": ((32,), ("mlp",)),
                  "discriminator_head/dense_prediction/bias": ((), ())}
  for prefix, width in (("", 32), ("generator/", 16)):
    assert flat[f"{prefix}embeddings_project/kernel"].shape == (24, width)
    assert tuple(logical[f"{prefix}embeddings_project/kernel"]) == ("token_embed", "embed")
  assert not any(k.startswith("generator/embeddings/") for k in flat)  # one set of tables
  assert flat["generator/mlm_head/dense/kernel"].shape == (16, 24)
  for rules in partitioning.RULE_SETS:
    partitioning.make_partitioner(4, rules).param_specs(variables["params"],
                                                        variables["params_axes"])
  shapes = jax.eval_shape(lambda r: electra.ElectraEncoder(c).init(
      r, jnp.ones((1, 4), jnp.int32)), jax.random.PRNGKey(0))
  assert (jax.tree_util.tree_structure(shapes["params"]) ==
          jax.tree_util.tree_structure(electra.encoder_params(variables["params"])))
  generator = electra.kind_params(variables["params"], "generator")
  with pytest.raises(InputError, match="no encoder subtree.*they hold the generator"):
    electra.encoder_params(generator)


def test_flops_count_both_models():
  c = electra.get_config("protelectra_paper")
  length = 512
  flat = _flat(jax.eval_shape(lambda r: electra.ElectraRTD(c).init(
      r, jnp.ones((1, 1), jnp.int32))["params"], jax.random.PRNGKey(0)))
  # Every kernel once per token, the tied decoder, the attention products.
  matmul = sum(np.prod(v.shape) for k, v in flat.items() if k.endswith("kernel"))
  matmul += c.vocab_size * c.embedding_size
  attention = 4 * length * (c.hidden_size * c.num_layers
                            + c.generator_hidden_size * c.generator_num_layers)
  expected = 3 * (2 * matmul + attention)
  np.testing.assert_allclose(electra.flops_per_token(c, length), expected, rtol=1e-12)
  model = registry.get_model("protelectra", c)
  shapes = {"encoder_input_tokens": (8, length)}
  assert model.flops_per_example(shapes) == electra.flops_per_token(c, length) * length
  assert model.tokens_per_example(shapes) == length
  assert electra.encoder_flops(c, length) == bert.encoder_flops(c.discriminator, length)


# --------------------------------------------------------------------------- objective

def _batch():
  """Two proteins, four masked positions ([MASK] = 4), one padded row."""
  targets = bert_tokens(["MKTAYIAKQR", "MPLLV"])
  weights = np.zeros_like(targets)
  weights[0, [2, 4, 6, 9]] = weights[1, [1, 3]] = 1
  return {"encoder_input_tokens": np.where(weights > 0, 4, targets).astype(np.int32),
          "encoder_target_tokens": targets, "encoder_loss_weights": weights}


def test_labels_are_where_the_sample_differs_from_the_original():
  """Hand-made generator logits fix each sample: two masked positions sampled
  back to their original (label 0), two others replaced, [PAD] never drawn."""
  batch = _batch()
  targets = batch["encoder_target_tokens"]
  want = targets.copy()
  want[0, 2], want[0, 6], want[1, 3] = 7, 9, 11  # replaced; [0, 4], [0, 9], [1, 1] sampled back
  logits = np.full(targets.shape + (30,), -30.0, np.float32)
  np.put_along_axis(logits, want[..., None], 30.0, axis=-1)
  logits[1, 1, 0] = 1e4  # [PAD] is excluded however likely
  logits[1, 1, targets[1, 1]] = 0.0
  replaced = np.asarray(electra.replace_tokens(jax.random.PRNGKey(0), logits, batch))
  np.testing.assert_array_equal(replaced, want)
  disc = np.random.default_rng(0).normal(0, 2, targets.shape).astype(np.float32)
  _, m = electra.rtd_loss_and_metrics(jnp.asarray(logits), jnp.asarray(disc), replaced, batch,
                                      50.0)
  labels = (want != targets).astype(np.float64)
  real = targets > 0
  x = disc.astype(np.float64)
  bce = np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * labels
  np.testing.assert_allclose(float(m["discriminator_loss"]), bce[real].mean(), rtol=1e-6)
  np.testing.assert_allclose(float(m["loss"]), float(m["generator_loss"])
                             + 50 * float(m["discriminator_loss"]), rtol=1e-6)
  assert float(m["replacement_rate"]) == 3 / 6 and float(m["num_tokens"]) == 6
  said = x > 0
  np.testing.assert_allclose(float(m["discriminator_replaced_accuracy"]),
                             said[labels > 0].mean(), rtol=1e-6)
  np.testing.assert_allclose(float(m["discriminator_original_accuracy"]),
                             (~said)[real & (labels == 0)].mean(), rtol=1e-6)


@pytest.fixture(scope="module")
def model_and_params():
  """The tiny training model and random params (numpy, norms and biases off 1 / 0)."""
  model = electra.ElectraRTDModel(tiny(num_layers=1, generator_num_layers=1,
                                       dropout_rate=0.1))
  abstract = jax.eval_shape(lambda r: model.init_variables(
      r, {"encoder_input_tokens": (1, 8)})["params"], jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), abstract)
  return model, params


def test_no_gradient_reaches_the_generator_from_the_discriminator(model_and_params):
  model, params = model_and_params
  batch = _batch()

  def losses(p):
    _, m = model.loss_fn(p, batch, jax.random.PRNGKey(5))
    return jnp.stack([m["discriminator_loss"], m["generator_loss"]])

  jac = _flat(jax.jit(jax.jacrev(losses))(params))
  for path, g in jac.items():
    disc, gen = np.abs(np.asarray(g[0])).sum(), np.abs(np.asarray(g[1])).sum()
    if path.startswith("generator/"):
      assert disc == 0.0 and gen > 0, path  # the sample carries no gradient
    elif path.startswith("embeddings/"):
      assert gen > 0 and disc > 0, path  # the shared tables learn from both
    else:
      assert gen == 0.0 and disc > 0, path  # the discriminator's own


def test_same_seed_and_step_give_the_same_replacements(model_and_params):
  """The trainer's rng is fold_in(key(seed), step): the same (seed, step) samples
  the same replacements (a resumed run), another step others; without an rng
  (evaluation) the batch itself seeds the sampler."""
  model, params = model_and_params
  batch = _batch()
  replaced = jax.jit(lambda p, b, r: model.forward(p, b, r)[1])
  step = lambda seed, s: jax.random.fold_in(jax.random.PRNGKey(seed), s)
  first = np.asarray(replaced(params, batch, step(0, 7)))
  np.testing.assert_array_equal(first, np.asarray(replaced(params, batch, step(0, 7))))
  others = [np.asarray(replaced(params, batch, step(seed, s))) for seed, s in ((0, 8), (1, 7))]
  assert all((o != first).any() for o in others)
  masked = batch["encoder_loss_weights"] > 0
  for out in [first] + others:
    np.testing.assert_array_equal(out[~masked], batch["encoder_target_tokens"][~masked])
  evaluated = jax.jit(lambda p, b: model.forward(p, b, None)[1])
  np.testing.assert_array_equal(evaluated(params, batch), evaluated(params, dict(batch)))
  shifted = dict(batch, encoder_input_tokens=np.roll(batch["encoder_input_tokens"], 1, axis=0))
  assert int(electra.batch_fingerprint(batch["encoder_input_tokens"])) != int(
      electra.batch_fingerprint(shifted["encoder_input_tokens"]))


def test_the_discriminator_learns_to_spot_replacements_it_can_see(monkeypatch):
  """The discriminator reads the replaced tokens and learns from its loss:
  with every masked position replaced by `O` (which never occurs in its
  inputs: rare residues map to X) at positions drawn anew each step, only
  the token tells a replacement, and a short run spots nearly all of them.
  (On real proteins at the acid run's size it barely beats its base rate:
  bench/RESULTS.md.)"""
  from protjax.data.objectives import STANDARD_RESIDUES
  from protjax.vocab import ProtBertVocabulary
  vocab = ProtBertVocabulary()
  impossible = vocab.encode("O")[0]
  monkeypatch.setattr(electra, "replace_tokens", lambda rng, logits, batch: jnp.where(
      jnp.asarray(batch["encoder_loss_weights"]) > 0, impossible,
      batch["encoder_target_tokens"]).astype(jnp.int32))
  model = electra.ElectraRTDModel(tiny(num_layers=1, generator_num_layers=1))
  params = model.init_variables(jax.random.PRNGKey(0),
                                {"encoder_input_tokens": (1, 16)})["params"]
  rng = np.random.default_rng(0)

  def batch():
    targets = bert_tokens(["".join(rng.choice(list(STANDARD_RESIDUES), 30)) for _ in range(8)])
    weights = (rng.random(targets.shape) < 0.25) & np.isin(targets, vocab.residue_ids)
    return {"encoder_input_tokens": np.where(weights, vocab.mask_id, targets).astype(np.int32),
            "encoder_target_tokens": targets, "encoder_loss_weights": weights.astype(np.int32)}

  _, before = model.loss_fn(params, batch(), None)
  params = adam_fit(lambda p, b, step: model.loss_fn(p, b, None), params, batch, 60)
  _, after = model.loss_fn(params, batch(), None)
  accuracies = lambda m: (float(m["discriminator_replaced_accuracy"]),
                          float(m["discriminator_original_accuracy"]))
  assert min(accuracies(before)) < 0.9, accuracies(before)
  assert min(accuracies(after)) > 0.95, accuracies(after)


# --------------------------------------------------------------------------- the road

def test_generator_export_import_export_is_byte_identical(tmp_path):
  """The generator on request (`kind="generator"`, protjax-export --generator);
  the shared road tests the encoder and the discriminator."""
  fam = registry.get_family("protelectra")
  config = tiny()
  rng = np.random.default_rng(1)
  abstract = jax.eval_shape(lambda r: fam.make_model(config).init_variables(
      r, {"encoder_input_tokens": (1, 8)})["params"], jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), abstract)
  first = pathlib.Path(export.export_hf(params, config, tmp_path / "a", kind="generator"))
  assert json.load(open(first / "config.json"))["architectures"] == ["ElectraForMaskedLM"]
  model = export.import_hf(first)
  assert (model.family, model.kind, model.config) == (fam, "generator", config)
  second = pathlib.Path(export.export_hf(model.params, model.config, tmp_path / "b",
                                         kind="generator", vocabulary=model.vocabulary))
  for name in sorted(os.listdir(first)):
    assert (first / name).read_bytes() == (second / name).read_bytes(), name
  with pytest.raises(InputError, match="the tensors are ELECTRA's generator"):
    export.import_hf(first, kind="encoder")


def test_a_released_style_config_gets_the_other_model_by_table_2():
  """A config.json without protjax's sizes (the released Rostlab models)."""
  hf = hf_electra.hf_config(electra.get_config("protelectra_paper"), "discriminator")
  del hf[hf_electra.PROTJAX_KEY]
  assert hf_electra.config_from_hf(hf) == electra.get_config("protelectra_paper",
                                                             dtype="float32")
  generator = hf_electra.hf_config(electra.get_config("protelectra_paper"), "generator")
  del generator[hf_electra.PROTJAX_KEY]
  assert hf_electra.config_from_hf(generator) == electra.get_config("protelectra_paper",
                                                                    dtype="float32")
  bad = dict(hf, protjax_electra={"generator": {"hidden_size": 8}, "discriminator": {}})
  with pytest.raises(InputError, match="config.json: config key 'protjax_electra.discriminator."
                                       "hidden_size' must be a positive integer, got None"):
    hf_electra.config_from_hf(bad, path="config.json")


@pytest.mark.parametrize("case", ["export_generator_of_protbert", "import_generator_as_encoder",
                                  "embed_generator", "import_bad_protjax_sizes"])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
  """ELECTRA's own mistakes, through the CLIs as a user makes them: one line
  naming the problem, exit 2, no output."""
  from test_family_road import cli  # pylint: disable=import-outside-toplevel
  config = tiny(num_layers=1, generator_num_layers=1)
  abstract = jax.eval_shape(lambda r: electra.ElectraRTDModel(config).init_variables(
      r, {"encoder_input_tokens": (1, 8)})["params"], jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), abstract)
  generator = export.export_hf(params, config, tmp_path / "generator", kind="generator")
  out = tmp_path / "out"
  if case == "export_generator_of_protbert":
    protbert = bert.get_config("protbert_tiny", num_layers=1)
    tree = jax.eval_shape(lambda r: bert.BertEncoder(protbert).init(
        r, jnp.ones((1, 4), jnp.int32)), jax.random.PRNGKey(0))["params"]
    ckpt = export.save_params_checkpoint(tmp_path / "ckpt", jax.tree.map(
        lambda x: np.zeros(x.shape, np.float32), tree), protbert)
    args = ("protjax.export:export_main", "--params_checkpoint", ckpt, "--output", out,
            "--generator")
    message = "--generator: a protbert model has no generator"
  elif case == "import_generator_as_encoder":
    args = ("protjax.export:import_main", generator, out, "--encoder_only")
    message = "the tensors are ELECTRA's generator (ElectraForMaskedLM), not the encoder"
  elif case == "embed_generator":
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">p\nMKT\n")
    out = tmp_path / "out.h5"
    args = ("protjax.embed:main", "--model", generator, "--fasta", fasta, "--per_residue", out,
            "--no_progress")
    message = "the tensors are ELECTRA's generator"
  else:
    hf = json.loads((pathlib.Path(generator) / "config.json").read_text())
    hf[hf_electra.PROTJAX_KEY]["generator"]["hidden_size"] = 8
    (pathlib.Path(generator) / "config.json").write_text(json.dumps(hf))
    args = ("protjax.export:import_main", generator, out)
    message = "config key 'protjax_electra.generator.hidden_size' is 8, but 'hidden_size' is 16"
  code, _, err = cli(*args)
  assert code == 2, err
  assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
  assert message in err
  assert not out.exists() and not list(tmp_path.glob("out.*"))


@pytest.mark.parametrize("run, length", [("protelectra_bfd.gin", 512),
                                         ("protelectra_bfd_1024.gin", 1024)])
def test_paper_runs_compose(run, length):
  """Table 2's run: the paper's sizes, LAMB 2e-3 with weight decay 0.01, 25%
  masking (the electra task), 512 then 1024; the batch and step counts
  REFERENCE.md does not give must be bound."""
  import gin  # pylint: disable=import-outside-toplevel
  from protjax import gin_setup, optim  # pylint: disable=import-outside-toplevel
  repo = pathlib.Path(__file__).resolve().parents[1]
  gin.add_config_file_search_path(str(repo))
  path = str(repo / "gin_configs" / "runs" / run)
  required = ["DataConfig.batch_size = 64", "train.train_steps = 10",
              "linear_warmup_decay.warmup_steps = 1", "linear_warmup_decay.total_steps = 20"]
  gin.clear_config()
  try:
    gin_setup.parse_gin([path], ["train.model_dir = '/tmp/x'", "train.init_from = '/y'"]
                        + required)
    assert gin.query_parameter("get_model.family") == "protelectra"
    assert gin.get_configurable(electra.ElectraConfig)() == electra.get_config(
        "protelectra_paper", remat=True)
    assert gin.query_parameter("DataConfig.task_name") == "bfd_electra"
    assert gin.query_parameter("DataConfig.sequence_length") == length
    assert gin.query_parameter("lamb.weight_decay") == 0.01
    assert gin.query_parameter("linear_warmup_decay.peak_rate") == 0.002
    assert isinstance(gin.get_configurable(optim.lamb)(), optim.Optimizer)
    from protjax.data.objectives import make_objective  # pylint: disable=import-outside-toplevel
    from protjax.data.config import DataConfig  # pylint: disable=import-outside-toplevel
    # No mask_rate bound: the electra objective's own, 25%.
    assert gin.get_configurable(DataConfig)().mask_rate is None
    assert make_objective("electra").mask_rate == 0.25
    gin.clear_config()
    with pytest.raises(ValueError, match="set to `%gin.REQUIRED` but not subsequently"):
      gin_setup.parse_gin([path], ["train.model_dir = '/tmp/x'", "train.init_from = '/y'"])
  finally:
    gin.clear_config()
