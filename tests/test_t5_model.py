"""ProtT5 model: parameter tree and counts, padding/packing invariance, paths, loss."""
from __future__ import annotations

import dataclasses

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protjax import axes
from protjax.errors import InputError
from protjax.models import t5

TINY = t5.get_config("tiny")
TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(scope="module")
def params():
  return t5.EncoderDecoderModel(TINY).init_variables(jax.random.PRNGKey(0), 1, 4, 4)["params"]


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _tokens(lengths, total, seed=0):
  """`[len(lengths), total]` residue ids (3..27) with `</s>`=1 last, 0 padding."""
  rng = np.random.RandomState(seed)
  out = np.zeros((len(lengths), total), np.int32)
  for i, n in enumerate(lengths):
    out[i, :n - 1] = rng.randint(3, 28, n - 1)
    out[i, n - 1] = 1
  return out


@jax.jit
def _encode(params, tokens, segment_ids=None, positions=None):
  return t5.T5Encoder(TINY).apply({"params": t5.encoder_params(params)}, tokens, segment_ids,
                                  positions)


# --------------------------------------------------------------------------- configs and counts

def _expected_counts(c):
  """Counted by hand: embedding + per-layer attention/MLP/norms + bias tables + final norms."""
  attn = 4 * c.d_model * c.num_heads * c.d_kv
  mlp = 2 * c.d_model * c.d_ff
  emb = c.vocab_size * c.d_model
  rel = c.num_heads * c.relative_attention_num_buckets
  enc = emb + c.num_encoder_layers * (attn + mlp + 2 * c.d_model) + rel + c.d_model
  dec = c.num_decoder_layers * (2 * attn + mlp + 3 * c.d_model) + rel + c.d_model
  return enc + dec, enc


def test_xl_and_xxl_parameter_counts_without_allocating():
  before = {id(a) for a in jax.live_arrays()}
  xl, xxl = t5.get_config("xl"), t5.get_config("xxl")
  assert t5.param_count(xl) == (2_818_830_336, 1_208_141_824)  # ProtTrans' published figures
  total, encoder = t5.param_count(xxl)
  assert (total, encoder) == _expected_counts(xxl)
  assert 11.0e9 < total < 11.5e9
  new = [a for a in jax.live_arrays() if id(a) not in before]
  assert sum(a.size for a in new) < 1_000_000  # nothing of weight size was allocated


def test_size_configs_have_the_documented_dimensions():
  expected = {  # (d_model, d_ff, heads, d_kv, layers)
      "tiny": (32, 64, 2, 16, 2), "small": (512, 2048, 8, 64, 6),
      "base": (768, 3072, 12, 64, 12), "large": (1024, 4096, 16, 64, 24),
      "xl": (1024, 16384, 32, 128, 24), "xxl": (1024, 65536, 128, 128, 24)}
  for name, dims in expected.items():
    c = t5.get_config(name)
    assert (c.d_model, c.d_ff, c.num_heads, c.d_kv, c.num_encoder_layers) == dims, name
    assert c.num_decoder_layers == c.num_encoder_layers and c.vocab_size == 128
    assert (c.relative_attention_num_buckets, c.relative_attention_max_distance) == (32, 128)
    assert t5.param_count(c) == _expected_counts(c) if name in ("tiny", "small") else True


def test_get_config_reads_gin_without_touching_global_gin_state(tmp_path):
  before = gin.config_str()
  c = t5.get_config("small", attention_impl="blockwise")
  assert c.attention_impl == "blockwise" and c.d_model == 512
  assert gin.config_str() == before
  base = tmp_path / "base.gin"
  base.write_text("T5Config.d_model = 16\nT5Config.d_ff = 8\n")
  child = tmp_path / "child.gin"
  child.write_text("include 'base.gin'\nT5Config.d_ff = 24\nother.thing = 3\n")
  c = t5.get_config(str(child))
  assert (c.d_model, c.d_ff, c.num_heads) == (16, 24, 8)  # include, override, default
  # The project's own files include 'gin_configs/...' (repo-root relative, as gin does).
  wide = t5.get_config(str(t5.GIN_DIR / "prott5_mini_wide.gin"))
  assert (wide.d_model, wide.num_encoder_layers, wide.num_heads) == (128, 3, 4)
  bad = tmp_path / "bad.gin"
  bad.write_text("T5Config.d_model = 16\nT5Config.d_modle = 8\n")
  with pytest.raises(InputError, match="d_modle") as e:
    t5.get_config(str(bad))
  assert "bad.gin" in str(e.value)
  with pytest.raises(InputError, match="unknown model config"):
    t5.get_config("huge")
  with pytest.raises(ValueError, match="attention_impl"):
    dataclasses.replace(TINY, attention_impl="flash")


def test_gin_files_bind_through_gin_setup():
  from protjax import gin_setup
  gin.clear_config()
  try:
    gin_setup.parse_gin([str(t5.GIN_DIR / "prott5_xl.gin")], finalize=False)
    assert gin.query_parameter("T5Config.d_ff") == 16384
  finally:
    gin.clear_config()


# --------------------------------------------------------------------------- parameter tree

def test_parameter_tree_and_logical_axes_follow_the_contract():
  variables = t5.EncoderDecoderModel(TINY).init_variables(jax.random.PRNGKey(0), 2, 8, 8)
  flat = _flat(variables["params"])
  names = {"token_embedder/embedding": ((128, 32), ("vocab", "embed")),
           "encoder/relpos_bias/rel_embedding": ((2, 32), ("heads", "relpos_buckets")),
           "encoder/encoder_norm/scale": ((32,), ("embed",)),
           "decoder/relpos_bias/rel_embedding": ((2, 32), ("heads", "relpos_buckets")),
           "decoder/decoder_norm/scale": ((32,), ("embed",))}
  attention = {f"{a}/kernel": ((32, 2, 16), ("embed", "heads", "kv"))
               for a in ("query", "key", "value")}
  attention["out/kernel"] = ((2, 16, 32), ("heads", "kv", "embed"))
  mlp = {"mlp/wi/kernel": ((32, 64), ("embed", "mlp")),
         "mlp/wo/kernel": ((64, 32), ("mlp", "embed"))}
  for i in range(2):
    e, d = f"encoder/layers_{i}", f"decoder/layers_{i}"
    for n in ("pre_attention_layer_norm", "pre_mlp_layer_norm"):
      names[f"{e}/{n}/scale"] = ((32,), ("embed",))
    for n in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm",
              "pre_mlp_layer_norm"):
      names[f"{d}/{n}/scale"] = ((32,), ("embed",))
    for k, v in attention.items():
      names[f"{e}/attention/{k}"] = v
      names[f"{d}/self_attention/{k}"] = v
      names[f"{d}/encoder_decoder_attention/{k}"] = v
    for k, v in mlp.items():
      names[f"{e}/{k}"] = v
      names[f"{d}/{k}"] = v
  assert set(flat) == set(names)
  logical = _flat(flax.linen.partitioning.get_axis_names(variables["params_axes"]))
  for path, (shape, axes_) in names.items():
    assert flat[path].shape == shape and flat[path].dtype == jnp.float32, path
    assert tuple(logical[path]) == axes_, path
    assert set(axes_) <= set(axes.PARAM_AXES)


def test_init_variables_works_abstractly_for_xxl():
  model = t5.EncoderDecoderModel(t5.get_config("xxl"))
  shapes = jax.eval_shape(lambda r: model.init_variables(r, 1, 4, 4), jax.random.PRNGKey(0))
  wi = shapes["params"]["encoder"]["layers_23"]["mlp"]["wi"]["kernel"]
  assert wi.shape == (1024, 65536) and wi.dtype == jnp.float32
  assert "params_axes" in shapes


def test_initialisation_is_sensible_and_seeded():
  a = t5.EncoderDecoderModel(TINY).init_variables(jax.random.PRNGKey(0), 1, 4, 4)["params"]
  b = t5.EncoderDecoderModel(TINY).init_variables(jax.random.PRNGKey(0), 1, 4, 4)["params"]
  c = t5.EncoderDecoderModel(TINY).init_variables(jax.random.PRNGKey(1), 1, 4, 4)["params"]
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  fa, fc = _flat(a), _flat(c)
  assert not np.allclose(fa["encoder/layers_0/mlp/wi/kernel"], fc["encoder/layers_0/mlp/wi/kernel"])
  assert abs(float(np.std(fa["token_embedder/embedding"])) - 1.0) < 0.1
  # fan-in variance scaling: wi std ~ 1/sqrt(d_model); query additionally / sqrt(d_kv).
  assert abs(float(np.std(fa["encoder/layers_0/mlp/wi/kernel"])) * np.sqrt(32) - 1.0) < 0.2
  q = fa["encoder/layers_0/attention/query/kernel"]
  assert abs(float(np.std(q)) * np.sqrt(32 * 16) - 1.0) < 0.2
  assert np.all(fa["encoder/encoder_norm/scale"] == 1.0)


# --------------------------------------------------------------------------- behaviour

def test_encoder_module_matches_the_encoder_half_of_t5(params):
  tokens = jnp.asarray(_tokens([9, 6], 9))
  full = t5.T5(TINY).apply({"params": params}, tokens, method=t5.T5.encode)
  alone = _encode(params, tokens)
  np.testing.assert_allclose(np.asarray(alone), np.asarray(full), **TOL)
  shapes = jax.eval_shape(lambda r: t5.T5Encoder(TINY).init(r, tokens), jax.random.PRNGKey(0))
  assert set(shapes["params"]) == {"token_embedder", "encoder"}
  assert (jax.tree_util.tree_structure(shapes["params"]) ==
          jax.tree_util.tree_structure(t5.encoder_params(params)))
  with pytest.raises(InputError, match="no token_embedder / encoder subtree"):
    t5.encoder_params({"decoder": params["decoder"]})


def test_padding_does_not_change_residue_embeddings(params):
  tokens = _tokens([7, 12], 12)
  padded = np.concatenate([tokens, np.zeros((2, 9), np.int32)], axis=1)
  a = np.asarray(_encode(params, jnp.asarray(tokens)))
  b = np.asarray(_encode(params, jnp.asarray(padded)))
  np.testing.assert_allclose(b[:, :12][tokens > 0], a[tokens > 0], **TOL)
  # Protein 0 alone, unpadded, also matches its padded row.
  alone = np.asarray(_encode(params, jnp.asarray(tokens[:1, :7])))
  np.testing.assert_allclose(b[0, :7], alone[0], **TOL)


def _pack(proteins, total):
  tokens = np.zeros((1, total), np.int32)
  seg = np.zeros((1, total), np.int32)
  pos = np.zeros((1, total), np.int32)
  start = 0
  for i, p in enumerate(proteins):
    tokens[0, start:start + len(p)] = p
    seg[0, start:start + len(p)] = i + 1
    pos[0, start:start + len(p)] = np.arange(len(p))
    start += len(p)
  return tokens, seg, pos


@pytest.mark.parametrize("impl", ["einsum", "blockwise"])
def test_packed_inputs_match_each_protein_alone(params, impl):
  cfg = dataclasses.replace(TINY, attention_impl=impl, attention_block_size=8)
  model = t5.T5(cfg)
  lengths = [6, 11, 5]
  proteins = [_tokens([n], n, seed=s)[0] for s, n in enumerate(lengths)]
  enc, enc_seg, enc_pos = _pack(proteins, 26)
  decoder_inputs = [np.concatenate([[0], p[:-1]]) for p in proteins]  # shifted right, start 0
  dec, dec_seg, dec_pos = _pack(decoder_inputs, 26)
  apply = jax.jit(lambda *a: model.apply({"params": params}, *a))
  packed = np.asarray(apply(enc, dec, enc_seg, dec_seg, enc_pos, dec_pos))
  start = 0
  for p, d in zip(proteins, decoder_inputs):
    alone = np.asarray(apply(p[None], d[None], None, None, None, None))
    np.testing.assert_allclose(packed[0, start:start + len(p)], alone[0], **TOL)
    start += len(p)
  # Without segment ids the proteins would see each other: the test can fail.
  unpacked = np.asarray(apply(enc, dec, None, None, None, None))
  assert np.abs(unpacked[0, 6:17] - packed[0, 6:17]).max() > 1e-3


def test_attention_paths_agree_in_the_full_model(params):
  enc = jnp.asarray(_tokens([20, 13], 20))
  dec = jnp.asarray(np.concatenate([np.zeros((2, 1), np.int32), np.asarray(enc)[:, :-1]], 1))
  out = {}
  for impl in t5.attn_lib.IMPLEMENTATIONS:
    cfg = dataclasses.replace(TINY, attention_impl=impl, attention_block_size=8)
    out[impl] = np.asarray(jax.jit(lambda p, e, d: t5.T5(cfg).apply({"params": p}, e, d))(
        params, enc, dec))
  assert out["einsum"].shape == (2, 20, 128) and out["einsum"].dtype == np.float32
  np.testing.assert_allclose(out["xla"], out["einsum"], **TOL)
  np.testing.assert_allclose(out["blockwise"], out["einsum"], **TOL)


def test_decoder_is_causal(params):
  enc = jnp.asarray(_tokens([10], 10))
  dec = np.asarray(_tokens([10], 10, seed=5))
  changed = dec.copy()
  changed[0, 6:] = 4
  apply = jax.jit(lambda p, e, d: t5.T5(TINY).apply({"params": p}, e, d))
  a, b = np.asarray(apply(params, enc, dec)), np.asarray(apply(params, enc, changed))
  np.testing.assert_allclose(a[0, :6], b[0, :6], **TOL)
  assert np.abs(a[0, 6:] - b[0, 6:]).max() > 1e-3


def test_dropout_only_when_not_deterministic(params):
  tokens = jnp.asarray(_tokens([10], 10))
  p = {"params": t5.encoder_params(params)}
  run = jax.jit(lambda rng, det: t5.T5Encoder(TINY).apply(p, tokens, deterministic=det,
                                                          rngs={"dropout": rng}),
                static_argnums=1)
  det = _encode(params, tokens)
  det2 = run(jax.random.PRNGKey(1), True)
  np.testing.assert_allclose(np.asarray(det), np.asarray(det2), **TOL)
  d1 = run(jax.random.PRNGKey(1), False)
  d1b = run(jax.random.PRNGKey(1), False)
  d2 = run(jax.random.PRNGKey(2), False)
  np.testing.assert_array_equal(np.asarray(d1), np.asarray(d1b))
  assert np.abs(np.asarray(d1) - np.asarray(d2)).max() > 1e-3
  assert np.abs(np.asarray(d1) - np.asarray(det)).max() > 1e-3


def test_half_precision_inference_path(params):
  tokens = jnp.asarray(_tokens([16, 9], 16))
  ref = np.asarray(_encode(params, tokens))
  half = t5.to_half_precision(t5.encoder_params(params), jnp.bfloat16)
  flat = _flat(half)
  assert flat["encoder/layers_0/mlp/wi/kernel"].dtype == jnp.bfloat16
  assert flat["encoder/encoder_norm/scale"].dtype == jnp.float32
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  out = t5.T5Encoder(cfg).apply({"params": half}, tokens)
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, np.float32)
  valid = np.asarray(tokens) > 0
  rel = np.linalg.norm(out[valid] - ref[valid]) / np.linalg.norm(ref[valid])
  assert rel < 0.05, rel
  assert dataclasses.replace(TINY, dtype="auto").compute_dtype == jnp.float32  # CPU


def test_remat_gives_the_same_gradients():
  enc = jnp.asarray(_tokens([8, 5], 8))
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": enc,
           "decoder_target_tokens": enc}
  one_layer = dataclasses.replace(TINY, num_encoder_layers=1, num_decoder_layers=1)
  params = t5.EncoderDecoderModel(one_layer).init_variables(jax.random.PRNGKey(0), 1, 4, 4)
  grads = []
  for remat in (False, True):
    model = t5.EncoderDecoderModel(dataclasses.replace(one_layer, remat=remat))
    grads.append(jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(3))[0]))(
        params["params"]))
  for a, b in zip(*map(jax.tree_util.tree_leaves, grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- loss and flops

def test_loss_and_metrics_match_a_numpy_computation(params):
  model = t5.EncoderDecoderModel(TINY)
  target = _tokens([12, 8], 12, seed=1)
  enc = target.copy()
  enc[0, [1, 4, 7]] = t5.MASK_ID
  enc[1, [2]] = t5.MASK_ID
  dec = np.concatenate([np.zeros((2, 1), np.int32), target[:, :-1]], 1)
  weights = (target > 0).astype(np.float32)
  batch = {k: jnp.asarray(v) for k, v in dict(
      encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=target,
      decoder_loss_weights=weights).items()}
  loss, m = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
  logits = np.asarray(jax.jit(model.apply)(params, batch), np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  ce = log_z - np.take_along_axis(logits, target[..., None], -1)[..., 0]
  n = weights.sum()
  assert float(m["num_tokens"]) == n == 20
  np.testing.assert_allclose(float(m["cross_entropy"]), (ce * weights).sum() / n, rtol=1e-5)
  np.testing.assert_allclose(float(m["z_loss"]), 1e-4 * (log_z ** 2 * weights).sum() / n,
                             rtol=1e-4)
  np.testing.assert_allclose(float(loss), float(m["cross_entropy"] + m["z_loss"]), rtol=1e-6)
  correct = logits.argmax(-1) == target
  np.testing.assert_allclose(float(m["accuracy"]), (correct * weights).sum() / n, rtol=1e-6)
  masked = enc == t5.MASK_ID
  np.testing.assert_allclose(float(m["masked_residue_accuracy"]),
                             correct[masked].sum() / masked.sum(), rtol=1e-6)
  # Dropout changes the loss; the same rng reproduces it.
  loss_fn = jax.jit(lambda p, b, r: model.loss_fn(p, b, r)[0])
  l1 = loss_fn(params, batch, jax.random.PRNGKey(0))
  l2 = loss_fn(params, batch, jax.random.PRNGKey(0))
  assert float(l1) == float(l2) and abs(float(l1) - float(loss)) > 1e-4


def test_flops_per_token_is_6n_plus_attention():
  c = t5.get_config("xl")
  total, _ = t5.param_count(c)
  norms = (2 * c.num_encoder_layers + 3 * c.num_decoder_layers + 2) * c.d_model
  matmul_params = total - norms - 2 * c.num_heads * c.relative_attention_num_buckets
  length = 512
  hd = c.num_heads * c.d_kv
  attention = 3 * 4 * hd * length * (c.num_encoder_layers + 2 * c.num_decoder_layers)
  np.testing.assert_allclose(t5.flops_per_token(c, length, length), 6 * matmul_params + attention,
                             rtol=1e-12)
  assert t5.EncoderDecoderModel(c).flops_per_token(length, length) == t5.flops_per_token(
      c, length, length)


def test_activation_constraints_resolve_on_a_mesh(params):
  from protjax import partitioning
  model = t5.EncoderDecoderModel(TINY)
  variables = model.init_variables(jax.random.PRNGKey(0), 1, 4, 4)
  enc = jnp.asarray(_tokens([8, 5, 8, 3], 8))
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": enc,
           "decoder_target_tokens": enc}
  expected = float(jax.jit(lambda p, b: model.loss_fn(p, b, None)[0])(variables["params"], batch))
  part = partitioning.make_partitioner(2, "tp")
  sharded = jax.device_put(variables["params"],
                           part.param_shardings(variables["params"], variables["params_axes"]))
  with part.activation_context():
    step = jax.jit(lambda p, b: model.loss_fn(p, b, None)[0])
    text = step.lower(sharded, batch).as_text()
    loss = float(step(sharded, batch))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # q/k/v and the MLP hidden are constrained onto `model` (heads / mlp), the stream onto `data`.
  assert text.count('[{"data"}, {}, {"model"}, {}]') >= 3 * 4 * 2
  assert text.count('[{"data"}, {}, {"model"}]') >= 4
