"""ProtBert / ProtAlbert model: configs, parameter tree and counts, packing, loss, FLOPs."""
from __future__ import annotations

import dataclasses
import functools

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax import axes, partitioning
from protjax.errors import InputError
from protjax.models import bert

FAMILIES = ("protbert", "protalbert")
TOL = dict(rtol=2e-5, atol=2e-5)


def tiny(family, **overrides):
  return bert.get_config(f"{family}_tiny", **overrides)


@functools.lru_cache(maxsize=None)
def _tiny_params(family):
  """Random params of the tiny size, drawn in numpy on the abstract tree.

  Compiling `init` costs seconds; the behaviour tests need any weights, and
  norms and biases away from 1 and 0 make a misplaced one visible.
  """
  model = bert.EncoderMLMModel(tiny(family))
  abstract = jax.eval_shape(lambda r: model.init_variables(
      r, {"encoder_input_tokens": (1, 8)})["params"], jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name == "scale":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name.endswith("bias"):
      return rng.uniform(-0.1, 0.1, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module", params=FAMILIES)
def model_and_params(request):
  """(family, EncoderMLMModel of the tiny size, random params)."""
  return request.param, bert.EncoderMLMModel(tiny(request.param)), _tiny_params(request.param)


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _protein(length, seed):
  """`[CLS] residues [SEP]` ids (residues 5..29) of `length` tokens in all."""
  ids = np.random.RandomState(seed).randint(5, 30, length).astype(np.int32)
  ids[0], ids[-1] = 2, 3
  return ids


# --------------------------------------------------------------------------- configs and counts

def test_table_2_parameter_counts_without_allocating():
  before = {id(a) for a in jax.live_arrays()}
  protbert = bert.get_config("protbert_paper")
  assert (protbert.hidden_size, protbert.num_layers, protbert.num_heads,
          protbert.intermediate_size, protbert.max_position_embeddings) == (
              1024, 30, 16, 4096, 40000)
  assert bert.param_count(protbert) == (419_933_214, 418_881_536)
  albert = bert.get_config("protalbert_paper")
  assert (albert.hidden_size, albert.num_layers, albert.num_heads, albert.intermediate_size,
          albert.embedding_size, albert.share_layers) == (4096, 12, 64, 16384, 128, True)
  total, encoder = bert.param_count(albert)
  # transformers' AlbertForMaskedLM of these sizes has 207,557,794 with the released
  # 34-token vocabulary; protjax's has 4 rows fewer (word embedding 128 + output bias 1).
  assert total == 207_557_794 - 4 * (128 + 1) == 207_557_278
  assert encoder == total - (4096 * 128 + 128 + 2 * 128 + 30) == 207_032_576
  new = [a for a in jax.live_arrays() if id(a) not in before]
  assert sum(a.size for a in new) < 1_000_000  # nothing of weight size was allocated


def test_every_gin_file_loads_and_states_its_count():
  for name in bert.CONFIG_NAMES:
    c = bert.get_config(name)
    assert c.share_layers == name.startswith("protalbert"), name
    assert (c.vocab_size, c.max_position_embeddings, c.dropout_rate) == (30, 40000, 0.0)
    total, encoder = bert.param_count(c)
    header = (bert.GIN_DIR / f"{name}.gin").read_text().splitlines()[1]
    assert f"{total:,} parameters with the MLM head; encoder {encoder:,}" in header, name


def test_get_config_and_gin_registration(tmp_path):
  before = gin.config_str()
  c = bert.get_config("protbert_tiny", attention_impl="blockwise")
  assert (c.attention_impl, c.hidden_size, c.hidden_act) == ("blockwise", 32, "gelu")
  assert gin.config_str() == before
  child = tmp_path / "child.gin"
  child.write_text("include 'gin_configs/models/protalbert_tiny.gin'\nBertConfig.num_layers = 5\n")
  c = bert.get_config(str(child))
  assert (c.num_layers, c.embedding_size, c.hidden_act) == (5, 16, "gelu_new")
  bad = tmp_path / "bad.gin"
  bad.write_text("BertConfig.hiden_size = 8\n")
  with pytest.raises(InputError, match="unknown BertConfig field 'hiden_size'"):
    bert.get_config(str(bad))
  with pytest.raises(InputError, match="unknown model config"):
    bert.get_config("tiny")
  with pytest.raises(InputError, match="not divisible by num_heads"):
    bert.get_config("protbert_tiny", num_heads=3)
  for bad_field in (dict(hidden_act="relu"), dict(embedding_size=0), dict(dropout_rate=1.0),
                    dict(attention_impl="flash")):
    with pytest.raises(ValueError):
      bert.BertConfig(**bad_field)
  # Registered for gin (`@BertConfig()` in run files) by gin_setup.register_all.
  from protjax import gin_setup
  assert "protjax.models.bert" in gin_setup.MODULES
  assert bert.GIN_CONFIGURABLES == (bert.BertConfig,)

# --------------------------------------------------------------------------- parameter tree

def _expected_tree(c):
  """path -> (shape, logical axes) as the module docstring documents it."""
  e, h, m = c.embedding_width, c.hidden_size, c.intermediate_size
  heads, kv = c.num_heads, c.head_size
  te = axes.TOKEN_EMBED
  tree = {
      "embeddings/word_embeddings/embedding": ((c.vocab_size, e), ("vocab", te)),
      "embeddings/position_embeddings/embedding": ((40000, e), ("abspos", te)),
      "embeddings/token_type_embeddings/embedding": ((2, e), ("token_types", te)),
      "embeddings/layer_norm/scale": ((e,), (te,)),
      "embeddings/layer_norm/bias": ((e,), (te,)),
      "mlm_head/dense/kernel": ((h, e), ("embed", te)),
      "mlm_head/dense/bias": ((e,), (te,)),
      "mlm_head/layer_norm/scale": ((e,), (te,)),
      "mlm_head/layer_norm/bias": ((e,), (te,)),
      "mlm_head/output_bias": ((c.vocab_size,), ("vocab",)),
  }
  if c.embedding_size is not None:
    tree["embeddings/projection/kernel"] = ((e, h), (te, "embed"))
    tree["embeddings/projection/bias"] = ((h,), ("embed",))
  layer = {"attention/out/kernel": ((heads, kv, h), ("heads", "kv", "embed")),
           "attention/out/bias": ((h,), ("embed",)),
           "mlp/wi/kernel": ((h, m), ("embed", "mlp")), "mlp/wi/bias": ((m,), ("mlp",)),
           "mlp/wo/kernel": ((m, h), ("mlp", "embed")), "mlp/wo/bias": ((h,), ("embed",))}
  for proj in ("query", "key", "value"):
    layer[f"attention/{proj}/kernel"] = ((h, heads, kv), ("embed", "heads", "kv"))
    layer[f"attention/{proj}/bias"] = ((heads, kv), ("heads", "kv"))
  for norm in ("attention_layer_norm", "mlp_layer_norm"):
    layer[f"{norm}/scale"] = layer[f"{norm}/bias"] = ((h,), ("embed",))
  names = ["shared_layer"] if c.share_layers else [f"layers_{i}" for i in range(c.num_layers)]
  for name in names:
    tree.update({f"encoder/{name}/{k}": v for k, v in layer.items()})
  return tree


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_tree_and_logical_axes_follow_the_docstring(family):
  c = tiny(family)
  variables = jax.eval_shape(lambda r: bert.EncoderMLMModel(c).init_variables(
      r, {"encoder_input_tokens": (2, 8)}), jax.random.PRNGKey(0))
  flat = _flat(variables["params"])
  logical = _flat(flax.linen.partitioning.get_axis_names(variables["params_axes"]))
  expected = _expected_tree(c)
  assert set(flat) == set(expected)
  for path, (shape, names) in expected.items():
    assert flat[path].shape == shape and flat[path].dtype == jnp.float32, path
    assert tuple(logical[path]) == names, path
    assert set(names) <= set(axes.PARAM_AXES)
  # Every rule set lays the tree out (no parameter names one mesh axis twice).
  for rules in partitioning.RULE_SETS:
    partitioning.make_partitioner(4, rules).param_specs(variables["params"],
                                                        variables["params_axes"])
  # The embedding module holds exactly the encoder subtrees.
  shapes = jax.eval_shape(lambda r: bert.BertEncoder(c).init(r, jnp.ones((1, 4), jnp.int32)),
                          jax.random.PRNGKey(0))
  assert (jax.tree_util.tree_structure(shapes["params"]) ==
          jax.tree_util.tree_structure(bert.encoder_params(variables["params"])))
  with pytest.raises(InputError, match="no embeddings / encoder subtree"):
    bert.encoder_params({"token_embedder": {}})


@pytest.mark.parametrize("family", FAMILIES)
def test_initialisation_follows_bert(family):
  model = bert.EncoderMLMModel(tiny(family))
  params = jax.jit(lambda r: model.init_variables(r, {"encoder_input_tokens": (1, 8)}))(
      jax.random.PRNGKey(0))["params"]
  flat = _flat(params)
  # normal(0.02) everywhere, queries included (T5 scales its init by fan-in and d_kv).
  query = next(k for k in flat if k.endswith("attention/query/kernel"))
  for path in ("embeddings/word_embeddings/embedding", "mlm_head/dense/kernel", query):
    assert abs(float(np.std(flat[path])) - 0.02) < 0.005, path
  assert np.all(flat["embeddings/layer_norm/scale"] == 1.0)
  assert not np.any(flat["mlm_head/output_bias"])


# --------------------------------------------------------------------------- behaviour

@pytest.mark.parametrize("impl", ["einsum", "blockwise"])
def test_packed_row_matches_each_protein_alone(model_and_params, impl):
  _, model, params = model_and_params
  cfg = dataclasses.replace(model.config, attention_impl=impl, attention_block_size=8)
  proteins = [_protein(n, seed) for seed, n in enumerate((9, 14))]
  # One batch (one compilation), rows of 26 tokens: the two proteins packed;
  # packed but in one segment (they see each other: the test can fail); each
  # protein alone, padded.
  tokens, seg, pos = (np.zeros((4, 26), np.int32) for _ in range(3))
  tokens[:2, :23] = np.concatenate(proteins)
  seg[0, :23] = np.repeat([1, 2], [9, 14])
  seg[1, :23] = 1
  pos[:2, :23] = np.concatenate([np.arange(9), np.arange(14)])
  for row, p in zip((2, 3), proteins):
    tokens[row, :len(p)], seg[row, :len(p)], pos[row, :len(p)] = p, 1, np.arange(len(p))
  out = np.asarray(jax.jit(lambda *a: bert.BertEncoder(cfg).apply(
      {"params": bert.encoder_params(params)}, *a))(tokens, seg, pos))
  np.testing.assert_allclose(out[0, :9], out[2, :9], **TOL)
  np.testing.assert_allclose(out[0, 9:23], out[3, :14], **TOL)
  assert np.abs(out[1, :9] - out[0, :9]).max() > 1e-3


def _batch(seed=0):
  """Two masked proteins: [MASK]=4 where the loss weight is 1."""
  targets = np.stack([_protein(12, seed), np.pad(_protein(8, seed + 1), (0, 4))])
  weights = np.zeros_like(targets)
  weights[0, [2, 5, 9]] = weights[1, [1, 4]] = 1
  inputs = np.where(weights > 0, 4, targets)
  return {"encoder_input_tokens": inputs, "encoder_target_tokens": targets,
          "encoder_loss_weights": weights}


def test_loss_is_over_masked_positions_only(model_and_params):
  _, model, params = model_and_params
  batch = _batch()

  def loss_fn(p, b):  # model.loss_fn, keeping the logits (one compilation)
    logits = model.apply(p, b)
    loss, metrics = bert._loss_and_metrics(logits, b)  # pylint: disable=protected-access
    return loss, (metrics, logits)

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, (m, logits)), grads = step(params, batch)
  logits = np.asarray(logits, np.float64)
  t, w = batch["encoder_target_tokens"], batch["encoder_loss_weights"]
  log_z = np.log(np.exp(logits).sum(-1))
  ce = log_z - np.take_along_axis(logits, t[..., None], -1)[..., 0]
  assert float(m["num_tokens"]) == w.sum() == 5
  np.testing.assert_allclose(float(loss), (ce * w).sum() / 5, rtol=1e-5)
  assert float(m["cross_entropy"]) == float(m["loss"]) == float(loss)
  correct = logits.argmax(-1) == t
  np.testing.assert_allclose(float(m["accuracy"]), (correct * w).sum() / 5, rtol=1e-6)
  assert float(m["masked_residue_accuracy"]) == float(m["accuracy"])
  # A target where the weight is 0 does not count.
  changed = dict(batch, encoder_target_tokens=np.where(w > 0, t, 7))
  assert float(step(params, changed)[0][0]) == float(loss)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
  assert float(jnp.abs(_flat(grads)["mlm_head/output_bias"]).sum()) > 0


def test_dropout_is_seeded_by_the_dropout_rng():
  """Dropout (Table 2: 0.0, but configurable) draws from the rng; None is deterministic."""
  model = bert.EncoderMLMModel(tiny("protalbert", dropout_rate=0.1))
  loss = jax.jit(lambda p, r: model.loss_fn(p, _batch(seed=3), r)[0])
  params = _tiny_params("protalbert")
  a, b, c = (float(loss(params, jax.random.PRNGKey(k))) for k in (0, 0, 1))
  assert a == b and abs(a - c) > 1e-5


def test_length_beyond_the_position_table_is_refused():
  c = tiny("protbert", max_position_embeddings=8)
  with pytest.raises(InputError, match="input length 9 exceeds the model's 8 position"):
    jax.eval_shape(lambda r: bert.BertEncoder(c).init(r, jnp.ones((1, 9), jnp.int32)),
                   jax.random.PRNGKey(0))


# --------------------------------------------------------------------------- Model protocol

@pytest.mark.parametrize("name", ["protbert_paper", "protalbert_paper"])
def test_flops_are_6n_per_applied_layer_plus_attention(name):
  c = bert.get_config(name)
  abstract = jax.eval_shape(lambda r: bert.BertForMaskedLM(c).init(
      r, jnp.ones((1, 1), jnp.int32))["params"], jax.random.PRNGKey(0))
  flat = _flat(abstract)
  # Weights a token goes through: every matrix (not tables, biases, norms); the
  # shared ALBERT layer once per application; the tied decoder.
  layer = sum(np.prod(v.shape) for k, v in flat.items()
              if k.startswith("encoder/") and k.endswith("kernel")) // (
                  1 if c.share_layers else c.num_layers)
  other = sum(np.prod(v.shape) for k, v in flat.items()
              if not k.startswith("encoder/") and k.endswith("kernel"))
  matmul = c.num_layers * layer + other + c.vocab_size * c.embedding_width
  length = 512
  attention = 3 * 4 * length * c.hidden_size * c.num_layers
  np.testing.assert_allclose(bert.flops_per_token(c, length), 6 * matmul + attention,
                             rtol=1e-12)
  model = bert.EncoderMLMModel(c)
  shapes = {"encoder_input_tokens": (8, length), "encoder_target_tokens": (8, length)}
  assert model.tokens_per_example(shapes) == length
  assert model.flops_per_example(shapes) == bert.flops_per_token(c, length) * length
  assert model.family == name.split("_")[0]
  with pytest.raises(InputError, match="needs feature 'encoder_input_tokens'"):
    model.tokens_per_example({"decoder_target_tokens": (8, 4)})
