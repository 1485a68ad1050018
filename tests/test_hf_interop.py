"""protjax <-> Hugging Face T5: the param mapping, config checks, tokenizer, and parity.

The parity tests keep the Hugging Face reference code (transformers' PyTorch
T5EncoderModel / T5ForConditionalGeneration on CPU, float32, eval mode) in the
test and compare against protjax at float32 with relative error < 1e-5.
"""
from __future__ import annotations

import os
import types

import numpy as np
from flax import traverse_util
import pytest

from protjax import export
from protjax.hf import t5 as hf_t5
from protjax.models import registry, t5
from protjax.errors import InputError
from protjax.vocab import PROTT5_RESIDUES, ProtT5Vocabulary

from helpers import t5_tokens, rel_error

# Real proteins (DeepLoc training fragments, tests/fixtures/data), 12..60 residues,
# so a batch has padding of several lengths.
SEQUENCES = [
    "MGCMKSKQTFPFPTIYEGEKQHESEEPFMPEERCLPRMASPVNVKEEVKEPPGTNTVILE",
    "MPMKSLRNDHGTLKAMIGSDFNELTIAAKNLATHAF",
    "MNWTAATCWALL",
    "MIPAVVLLLLLLVEQAAALGEPQLCYILDAILFLYGIVLTLLYCRL",
]
TOLERANCE = 1e-5

# Sizes of the `tiny` config, for the numpy-only mapping tests.
TINY_DIMS = types.SimpleNamespace(
    vocab_size=128, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=2,
    num_decoder_layers=3, relative_attention_num_buckets=32)


def random_state_dict(config, kind, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32)
          for k, s in hf_t5.expected_hf_shapes(config, kind).items()}


def flatten(tree):
  """`{"a/b/c": leaf}` of a nested params dict (leaves unchanged)."""
  return traverse_util.flatten_dict(tree, sep="/")


# --- mapping (numpy only) -------------------------------------------------------
def test_mapping_gives_the_common_parameter_tree():
  params = hf_t5.from_hf_state_dict(random_state_dict(TINY_DIMS, "encoder_decoder"),
                                         TINY_DIMS, "encoder_decoder")
  shapes = {k: v.shape for k, v in flatten(params).items()}
  # The tree in protjax/models/t5.py's docstring, with d_model 32, heads 2, kv 16, mlp 64.
  assert shapes["token_embedder/embedding"] == (128, 32)
  assert shapes["encoder/relpos_bias/rel_embedding"] == (2, 32)
  assert shapes["decoder/relpos_bias/rel_embedding"] == (2, 32)
  assert shapes["encoder/layers_1/attention/query/kernel"] == (32, 2, 16)
  assert shapes["encoder/layers_1/attention/out/kernel"] == (2, 16, 32)
  assert shapes["encoder/layers_0/mlp/wi/kernel"] == (32, 64)
  assert shapes["encoder/layers_0/mlp/wo/kernel"] == (64, 32)
  assert shapes["encoder/encoder_norm/scale"] == (32,)
  assert shapes["decoder/layers_2/encoder_decoder_attention/value/kernel"] == (32, 2, 16)
  assert shapes["decoder/layers_2/pre_cross_attention_layer_norm/scale"] == (32,)
  assert shapes["decoder/decoder_norm/scale"] == (32,)
  per_encoder_layer = 2 + 4 + 2
  per_decoder_layer = 3 + 8 + 2
  assert len(shapes) == 1 + (1 + 2 * per_encoder_layer + 1) + (1 + 3 * per_decoder_layer + 1)
  assert all(v.dtype == np.float32 for v in flatten(params).values())


@pytest.mark.parametrize("kind", ["encoder", "encoder_decoder"])
def test_mapping_round_trips_exactly(kind):
  state = random_state_dict(TINY_DIMS, kind, seed=1)
  params = hf_t5.from_hf_state_dict(state, TINY_DIMS, kind)
  back = hf_t5.to_hf_state_dict(params, TINY_DIMS, kind=kind)
  assert sorted(back) == sorted(state)
  for k in state:
    assert back[k].tobytes() == state[k].tobytes(), k
    assert back[k].flags.c_contiguous


def test_mapping_preserves_what_each_layer_computes():
  """Same projections in both layouts: HF `x @ W.T` vs protjax einsums."""
  state = random_state_dict(TINY_DIMS, "encoder", seed=2)
  params = hf_t5.from_hf_state_dict(state, TINY_DIMS, "encoder")
  layer = params["encoder"]["layers_1"]
  x = np.random.default_rng(3).standard_normal((5, 32)).astype(np.float32)
  hf = "encoder.block.1.layer."
  # Query: HF reshapes the [l, heads*kv] output to [l, heads, kv].
  q_hf = (x @ state[hf + "0.SelfAttention.q.weight"].T).reshape(5, 2, 16)
  q_px = np.einsum("le,ehd->lhd", x, layer["attention"]["query"]["kernel"])
  np.testing.assert_allclose(q_px, q_hf, rtol=1e-5, atol=1e-5)
  # Output: HF flattens heads first, [l, heads*kv] @ Wo.T.
  a = np.random.default_rng(4).standard_normal((5, 2, 16)).astype(np.float32)
  o_hf = a.reshape(5, 32) @ state[hf + "0.SelfAttention.o.weight"].T
  o_px = np.einsum("lhd,hde->le", a, layer["attention"]["out"]["kernel"])
  np.testing.assert_allclose(o_px, o_hf, rtol=1e-5, atol=1e-5)
  # MLP.
  h_hf = np.maximum(x @ state[hf + "1.DenseReluDense.wi.weight"].T, 0) @ state[
      hf + "1.DenseReluDense.wo.weight"].T
  h_px = np.maximum(x @ layer["mlp"]["wi"]["kernel"], 0) @ layer["mlp"]["wo"]["kernel"]
  np.testing.assert_allclose(h_px, h_hf, rtol=1e-5, atol=1e-5)
  # Relative bias: HF embeds bucket -> [heads]; protjax indexes [heads, bucket].
  table = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
  np.testing.assert_array_equal(params["encoder"]["relpos_bias"]["rel_embedding"][:, 7],
                                table[7])
  # Norms keep their sub-layer: layer.0 is pre-attention, layer.1 pre-MLP.
  np.testing.assert_array_equal(layer["pre_mlp_layer_norm"]["scale"],
                                state[hf + "1.layer_norm.weight"])


def test_import_accepts_equal_tied_aliases_and_rejects_untied():
  state = random_state_dict(TINY_DIMS, "encoder_decoder", seed=5)
  state["lm_head.weight"] = state["shared.weight"].copy()
  state["encoder.embed_tokens.weight"] = state["shared.weight"].copy()
  params = hf_t5.from_hf_state_dict(state, TINY_DIMS, "encoder_decoder")
  np.testing.assert_array_equal(params["token_embedder"]["embedding"], state["shared.weight"])
  state["lm_head.weight"] = state["lm_head.weight"] + 1
  with pytest.raises(InputError, match="'lm_head.weight' differs"):
    hf_t5.from_hf_state_dict(state, TINY_DIMS, "encoder_decoder", path="m.safetensors")
  # Only the alias present (older saves): used as the embedding.
  state = random_state_dict(TINY_DIMS, "encoder", seed=6)
  state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
  params = hf_t5.from_hf_state_dict(state, TINY_DIMS, "encoder")
  np.testing.assert_array_equal(params["token_embedder"]["embedding"],
                                state["encoder.embed_tokens.weight"])


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight"),
     "missing tensor 'encoder.block.1.layer.1.DenseReluDense.wo.weight'"),
    (lambda s: s.update({"encoder.block.0.layer.0.SelfAttention.k.weight": np.zeros((32, 16))}),
     r"tensor 'encoder.block.0.layer.0.SelfAttention.k.weight' has shape \[32, 16\], "
     r"expected \[32, 32\]"),
    (lambda s: s.update({"encoder.block.0.layer.1.DenseReluDense.wi_0.weight":
                         np.zeros((64, 32), np.float32)}),
     "unexpected tensor 'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'"),
    (lambda s: s.update({"encoder.final_layer_norm.weight": np.ones(32, np.int32)}),
     "'encoder.final_layer_norm.weight' has dtype int32"),
])
def test_import_names_the_offending_tensor(change, message):
  state = random_state_dict(TINY_DIMS, "encoder", seed=7)
  change(state)
  with pytest.raises(InputError, match=message) as e:
    hf_t5.from_hf_state_dict(state, TINY_DIMS, "encoder", path="/x/model.safetensors")
  assert str(e.value).startswith("/x/model.safetensors: ")


def test_encoder_import_ignores_the_decoder_of_a_full_model():
  state = random_state_dict(TINY_DIMS, "encoder_decoder", seed=8)
  params = hf_t5.from_hf_state_dict(state, TINY_DIMS, "encoder")
  assert sorted(params) == ["encoder", "token_embedder"]


# --- config.json -----------------------------------------------------------------
def hf_config_dict(**changes):
  cfg = hf_t5.hf_config(types.SimpleNamespace(
      vocab_size=128, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=2,
      num_decoder_layers=2, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6),
      "encoder")
  cfg.update(changes)
  return cfg


def test_config_fields_from_hf():
  fields = hf_t5.config_fields_from_hf(hf_config_dict(num_decoder_layers=5))
  assert fields == dict(vocab_size=128, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        num_encoder_layers=2, num_decoder_layers=5,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        dropout_rate=0.1, layer_norm_epsilon=1e-6)


def test_released_prott5_config_is_accepted():
  """config.json as the released Rostlab/prot_t5_xl_uniref50 has it (transformers 2/4 keys)."""
  released = {
      "architectures": ["T5WithLMHeadModel"], "d_ff": 16384, "d_kv": 128, "d_model": 1024,
      "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1,
      "feed_forward_proj": "relu", "initializer_factor": 1.0, "is_encoder_decoder": True,
      "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
      "num_heads": 32, "num_layers": 24, "output_past": True, "pad_token_id": 0,
      "relative_attention_num_buckets": 32, "torch_dtype": "float32", "vocab_size": 128}
  fields = hf_t5.config_fields_from_hf(released)
  assert (fields["d_model"], fields["d_ff"], fields["num_heads"], fields["d_kv"]) == (
      1024, 16384, 32, 128)
  assert fields["num_encoder_layers"] == fields["num_decoder_layers"] == 24
  assert hf_t5.kind_of(released, []) == "encoder_decoder"
  # The mapping covers every ProtT5-XL tensor: the published parameter counts.
  xl = types.SimpleNamespace(**fields)
  count = lambda kind: sum(int(np.prod(s)) for s in
                           hf_t5.expected_hf_shapes(xl, kind).values())
  assert count("encoder") == 1_208_141_824
  assert count("encoder_decoder") == 2_818_830_336
  assert hf_t5.kind_of(dict(released, architectures=["T5EncoderModel"]),
                            ["decoder.final_layer_norm.weight"]) == "encoder"
  assert hf_t5.kind_of(dict(released, architectures=None),
                            ["decoder.final_layer_norm.weight"]) == "encoder_decoder"
  with pytest.raises(InputError, match="config key 'architectures'"):
    hf_t5.kind_of(dict(released, architectures=["BertModel"]), [])


@pytest.mark.parametrize("changes, key", [
    (dict(feed_forward_proj="gated-gelu"), "feed_forward_proj"),
    (dict(is_gated_act=True), "is_gated_act"),
    (dict(vocab_size=32128), "vocab_size"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings"),
    (dict(d_model=0), "d_model"),
    (dict(num_heads="8"), "num_heads"),
    (dict(model_type="bert"), "model_type"),
])
def test_config_not_prott5_names_the_key(changes, key):
  with pytest.raises(InputError, match=f"config.json: config key '{key}'"):
    hf_t5.config_fields_from_hf(hf_config_dict(**changes), path="config.json")


# --- tokenizer -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tok"))
  hf_t5.write_tokenizer(d, registry.get_family("prott5").vocabulary())
  return d


@pytest.mark.parametrize("loader", ["AutoTokenizer", "T5Tokenizer", "PreTrainedTokenizerFast"])
def test_hf_tokenizer_gives_protjax_ids(tokenizer_dir, loader):
  transformers = pytest.importorskip("transformers")
  tok = getattr(transformers, loader).from_pretrained(tokenizer_dir)
  # The released tokenizer keeps U Z O B apart (map them to X beforehand, as
  # protjax does by default); compare with the vocabulary that keeps them too.
  vocab = ProtT5Vocabulary(map_rare_residues=False)
  assert len(tok) == 128
  for residue in PROTT5_RESIDUES:
    assert tok(residue).input_ids == vocab.encode(residue) + [1], residue
  all_residues = " ".join(PROTT5_RESIDUES)
  assert tok(all_residues).input_ids == list(range(3, 28)) + [1]
  for seq in SEQUENCES:
    assert tok(" ".join(seq)).input_ids == ProtT5Vocabulary().encode(seq) + [1]
  # Specials keep their ids, as text and as ids.
  for i in range(128):
    name = vocab.id_to_token(i)
    assert tok.convert_tokens_to_ids(name if i < 3 or i >= 28 else "\u2581" + name) == i
  assert tok("M <extra_id_0> K").input_ids == [vocab.encode("M")[0], 127,
                                               vocab.encode("K")[0], 1]
  assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
  batch = tok([" ".join(s) for s in SEQUENCES], padding=True, return_tensors="np")
  np.testing.assert_array_equal(batch["input_ids"], t5_tokens(SEQUENCES))
  np.testing.assert_array_equal(batch["attention_mask"], t5_tokens(SEQUENCES) != 0)


def test_sentencepiece_model_gives_protjax_ids(tokenizer_dir):
  """spiece.model is what transformers 4's slow T5Tokenizer reads (the ProtTrans
  README's `T5Tokenizer.from_pretrained(dir, do_lower_case=False)`; checked by
  hand with transformers 4.34.1: same ids, <extra_id_0> = 127)."""
  spm = pytest.importorskip("sentencepiece")
  sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "spiece.model"))
  assert sp.get_piece_size() == 28
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  for seq in SEQUENCES + [PROTT5_RESIDUES[:20]]:
    assert sp.encode(" ".join(seq)) == ProtT5Vocabulary().encode(seq)


# --- parity with transformers (PyTorch, CPU, float32) ------------------------------
def _perturbed(params, seed):
  """Random norm scales too: with all-ones scales a swapped norm would go unseen."""
  import jax
  rng = np.random.default_rng(seed)
  flat = jax.tree_util.tree_flatten_with_path(params)
  leaves = []
  for path, x in flat[0]:
    x = np.asarray(x)
    if getattr(path[-1], "key", None) == "scale":
      x = rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    leaves.append(x)
  return jax.tree_util.tree_unflatten(flat[1], leaves)


@pytest.fixture(scope="module")
def tiny_full_params():
  import jax
  from protjax.models.t5 import T5, get_config
  config = get_config("tiny")
  tokens = np.ones((1, 8), np.int32)
  variables = T5(config).init(jax.random.PRNGKey(0), tokens, tokens)
  return _perturbed(variables["params"], seed=0), config


@pytest.mark.parametrize("attention_impl", ["einsum", "xla"])
def test_exported_encoder_matches_hf_t5_encoder_model(tmp_path, tiny_full_params, attention_impl):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import dataclasses

  from protjax.models.t5 import T5Encoder
  params, config = tiny_full_params
  out = export.export_hf(params, config, tmp_path / "hf")
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors",
                                     "special_tokens_map.json", "spiece.model",
                                     "tokenizer.json", "tokenizer_config.json"]
  tokens = t5_tokens(SEQUENCES)

  # --- Hugging Face reference (kept as is) ---
  model, info = transformers.T5EncoderModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  model.eval()
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(tokens != 0).long()).last_hidden_state.numpy()
  # The tokenizer shipped next to the weights gives the same batch.
  tok = transformers.AutoTokenizer.from_pretrained(out)
  np.testing.assert_array_equal(
      tok([" ".join(s) for s in SEQUENCES], padding=True, return_tensors="np")["input_ids"],
      tokens)

  cfg = dataclasses.replace(config, attention_impl=attention_impl, dtype="float32")
  got = np.asarray(T5Encoder(cfg).apply({"params": t5.encoder_params(params)}, tokens,
                                        deterministic=True))
  keep = tokens != 0
  assert got.shape == ref.shape == tokens.shape + (config.d_model,)
  err = rel_error(got[keep], ref[keep])
  assert err < TOLERANCE, err
  # Padding must not matter: each protein alone gives the same vectors.
  for i, seq in enumerate(SEQUENCES[:2]):
    alone = t5_tokens([seq])
    single = np.asarray(T5Encoder(cfg).apply({"params": t5.encoder_params(params)}, alone))
    assert rel_error(single[0], got[i, :alone.shape[1]]) < TOLERANCE


def test_imported_hf_t5_matches_full_logits(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import jax

  from protjax.models.t5 import T5, T5Encoder

  # --- Hugging Face reference model (kept as is): ProtT5 settings, tiny sizes ---
  hf_config = transformers.T5Config(
      vocab_size=128, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=2,
      num_decoder_layers=3, feed_forward_proj="relu", tie_word_embeddings=True,
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      layer_norm_epsilon=1e-6, dropout_rate=0.1, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf_config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.uniform_(0.5, 1.5)
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  model.eval()
  tokens = t5_tokens(SEQUENCES)
  # Teacher forcing: the original ids shifted right, start id 0.
  decoder_inputs = np.concatenate([np.zeros((len(tokens), 1), np.int32), tokens[:, :-1]], 1)
  with torch.no_grad():
    outputs = model(input_ids=torch.from_numpy(tokens).long(),
                    attention_mask=torch.from_numpy(tokens != 0).long(),
                    decoder_input_ids=torch.from_numpy(decoder_inputs).long())
  ref_logits = outputs.logits.numpy()
  ref_encoded = outputs.encoder_last_hidden_state.numpy()

  model = export.import_hf(tmp_path / "hf")

  params, config, kind = model.params, model.config, model.kind
  assert kind == "encoder_decoder"
  assert (config.d_model, config.num_encoder_layers, config.num_decoder_layers) == (32, 2, 3)
  logits = np.asarray(T5(config).apply({"params": params}, tokens, decoder_inputs))
  encoded = np.asarray(T5Encoder(config).apply({"params": t5.encoder_params(params)},
                                               tokens))
  keep = tokens != 0
  # Decoder inputs have no padding inside the real targets: compare where the
  # target (tokens) is real.
  assert rel_error(logits[keep], ref_logits[keep]) < TOLERANCE
  assert rel_error(encoded[keep], ref_encoded[keep]) < TOLERANCE
  # The encoder of the full model, imported alone, is the same encoder.
  model = export.import_hf(tmp_path / "hf", kind="encoder")
  enc_params, enc_kind = model.params, model.kind
  assert enc_kind == "encoder"
  for a, b in zip(jax.tree.leaves(enc_params), jax.tree.leaves(t5.encoder_params(params))):
    np.testing.assert_array_equal(a, b)
