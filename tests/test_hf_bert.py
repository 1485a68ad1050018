"""ProtBert / ProtAlbert <-> Hugging Face: the numpy weight mapping, config.json, and parity.

Parity: a seeded transformers `BertForMaskedLM` / `AlbertForMaskedLM` (float32,
eval mode) and protjax, fed the same padded batch of real proteins, give the
same MLM logits and last hidden states on every attention path.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from protjax.errors import InputError
from protjax.hf import bert as hf_bert
from protjax.models import bert

from helpers import bert_tokens, rel_error

FAMILIES = ("protbert", "protalbert")
SEQUENCES = [
    "MGCMKSKQTFPFPTIYEGEKQHESEEPFMPEERCLPRMASPVNVKEEVKEPPGTNTVILE",
    "MPMKSLRNDHGTLKAMIGSDFNELTIAAKNLATHAF",
    "MNWTAATCWALL",
    "MIPAVVLLLLLLVEQAAALGEPQLCYILDAILFLYGIVLTLLYCRL",
]
TOLERANCE = 1e-5


def tiny(family, **overrides):
  return bert.get_config(f"{family}_tiny", **overrides)


def random_state_dict(config, kind, seed):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32)
          for k, s in hf_bert.expected_hf_shapes(config, kind).items()}


# --- Hugging Face reference models (kept as transformers builds them) ------------------
@pytest.fixture(scope="module", params=FAMILIES)
def reference(request):
  """(family, config, HF state dict, HF logits, HF last hidden state) for SEQUENCES."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  family = request.param
  config = tiny(family)
  fields = hf_bert.hf_config(config, "masked_lm")
  fields.pop("torch_dtype")
  hf_cfg = transformers.AutoConfig.for_model(**fields)
  hf_cfg._attn_implementation = "eager"
  torch.manual_seed(0)
  model = transformers.AutoModelForMaskedLM.from_config(hf_cfg)
  with torch.no_grad():
    # HF initialises norms to 1 and biases to 0: a swapped norm or bias would go unseen.
    for name, p in model.named_parameters():
      if "LayerNorm" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5)
      elif name.endswith("bias"):
        p.uniform_(-0.1, 0.1)
  model.eval()
  tokens = bert_tokens(SEQUENCES)
  with torch.no_grad():
    ids = torch.from_numpy(tokens).long()
    mask = torch.from_numpy(tokens != 0).long()
    logits = model(input_ids=ids, attention_mask=mask).logits.numpy()
    base = getattr(model, model.base_model_prefix)  # BertModel / AlbertModel
    hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
  state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  return family, config, state, logits, hidden


@pytest.mark.parametrize("impl", ["einsum", "xla", "blockwise"])
def test_imported_weights_give_hf_logits_and_hidden_states(reference, impl):
  import dataclasses

  import jax
  family, config, state, ref_logits, ref_hidden = reference
  params = hf_bert.from_hf_state_dict(state, config, path="model.safetensors")
  assert sorted(params) == ["embeddings", "encoder", "mlm_head"]
  cfg = dataclasses.replace(config, attention_impl=impl, attention_block_size=16)
  tokens = bert_tokens(SEQUENCES)

  def run(p, t):  # one compilation: the MLM model and the embedding module
    logits, hidden = bert.BertForMaskedLM(cfg).apply({"params": p}, t, return_hidden=True)
    return logits, hidden, bert.BertEncoder(cfg).apply({"params": bert.encoder_params(p)}, t)

  logits, hidden, embedded = map(np.asarray, jax.jit(run)(params, tokens))
  keep = tokens != 0
  assert logits.shape == tokens.shape + (30,) and logits.dtype == np.float32
  assert rel_error(logits[keep], ref_logits[keep]) < TOLERANCE, family
  assert rel_error(hidden[keep], ref_hidden[keep]) < TOLERANCE, family
  assert rel_error(embedded[keep], ref_hidden[keep]) < TOLERANCE, family


def test_export_loads_in_transformers_without_missing_keys(reference, tmp_path):
  transformers = pytest.importorskip("transformers")
  from safetensors.numpy import save_file
  family, config, state, _, _ = reference
  params = hf_bert.from_hf_state_dict(state, config)
  for kind, loader in (("masked_lm", transformers.AutoModelForMaskedLM),
                       ("encoder", transformers.AutoModel)):
    out = tmp_path / kind
    out.mkdir()
    save_file(hf_bert.to_hf_state_dict(params, config, kind=kind), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(hf_bert.hf_config(config, kind)))
    model, info = loader.from_pretrained(out, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "pooler" not in k]  # protjax has no pooler
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(model).__name__ == hf_bert.hf_config(config, kind)["architectures"][0]


# --- mapping (numpy only) ------------------------------------------------------------
def test_keys_and_shapes_are_what_save_pretrained_writes(reference):
  family, config, state, _, _ = reference
  head = "cls.predictions." if family == "protbert" else "predictions."
  tied = {head + "decoder.weight", head + "decoder.bias"}  # save_pretrained drops these
  saved = {k: v.shape for k, v in state.items() if k not in tied}
  assert hf_bert.expected_hf_shapes(config, "masked_lm") == saved
  params = hf_bert.from_hf_state_dict(state, config)
  out = hf_bert.to_hf_state_dict(params, config)
  assert {k: v.shape for k, v in out.items()} == saved
  prefix = "bert." if family == "protbert" else "albert."
  bare = hf_bert.to_hf_state_dict(params, config, kind="encoder")
  assert sorted(bare) == sorted(k[len(prefix):] for k in saved if k.startswith(prefix))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["encoder", "masked_lm"])
def test_round_trip_is_exact(family, kind):
  config = tiny(family)
  state = random_state_dict(config, kind, seed=1)
  params = hf_bert.from_hf_state_dict(state, config, kind)
  assert ("mlm_head" in params) == (kind == "masked_lm")
  back = hf_bert.to_hf_state_dict(params, config, kind=kind)
  assert sorted(back) == sorted(state)
  for k in state:
    assert back[k].tobytes() == state[k].tobytes(), k
    assert back[k].flags.c_contiguous
  again = hf_bert.from_hf_state_dict(back, config, kind)
  import jax
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_import_accepts_either_layout_and_ignores_what_the_mlm_model_does_not_use(family):
  config = tiny(family)
  state = random_state_dict(config, "masked_lm", seed=2)
  prefix, head = (("bert.", "cls.") if family == "protbert" else ("albert.", ""))
  pooler = ("pooler.dense" if family == "protbert" else "pooler")
  nsp = "cls.seq_relationship" if family == "protbert" else "sop_classifier.classifier"
  word = state[prefix + "embeddings.word_embeddings.weight"]
  # An older ForPreTraining-style save: tied decoder kept, pooler, NSP head, buffers.
  old = dict(state)
  old[head + "predictions.decoder.weight"] = word.copy()
  old[head + "predictions.decoder.bias"] = state[head + "predictions.bias"].copy()
  old.update({prefix + pooler + ".weight": np.zeros((32, 32), np.float32),
              prefix + pooler + ".bias": np.zeros(32, np.float32),
              nsp + ".weight": np.zeros((2, 32), np.float32), nsp + ".bias": np.zeros(2),
              prefix + "embeddings.position_ids": np.arange(40000)[None]})
  params = hf_bert.from_hf_state_dict(old, config)
  np.testing.assert_array_equal(params["embeddings"]["word_embeddings"]["embedding"], word)
  # The bare model (BertModel.save_pretrained: no prefix, no head) -> the encoder.
  bare = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  enc = hf_bert.from_hf_state_dict(bare, config)
  assert sorted(enc) == ["embeddings", "encoder"]
  # "encoder" drops the head of a full model; "masked_lm" needs it.
  assert sorted(hf_bert.from_hf_state_dict(state, config, "encoder")) == ["embeddings", "encoder"]
  head_dense = r"missing tensor '(cls\.)?predictions\.(transform\.)?dense\.weight'"
  with pytest.raises(InputError, match=head_dense):
    hf_bert.from_hf_state_dict(bare, config, "masked_lm")
  # An untied decoder is refused.
  old[head + "predictions.decoder.weight"] = word + 1
  with pytest.raises(InputError, match="'.*predictions.decoder.weight' differs from "
                                       "'embeddings.word_embeddings.weight'"):
    hf_bert.from_hf_state_dict(old, config, path="m.safetensors")


@pytest.mark.parametrize("family, change, message", [
    ("protbert", lambda s: s.pop("encoder.layer.1.output.dense.weight"),
     r"missing tensor 'encoder.layer.1.output.dense.weight' \(expected shape \[32, 64\]\)"),
    ("protbert", lambda s: s.update({"encoder.layer.0.attention.self.key.weight":
                                     np.zeros((32, 16), np.float32)}),
     r"tensor 'encoder.layer.0.attention.self.key.weight' has shape \[32, 16\], "
     r"expected \[32, 32\]"),
    ("protbert", lambda s: s.update({"encoder.layer.2.output.dense.weight":
                                     np.zeros((32, 64), np.float32)}),
     "unexpected tensor 'encoder.layer.2.output.dense.weight'"),
    ("protalbert", lambda s: s.update({
        "encoder.albert_layer_groups.1.albert_layers.0.ffn.bias": np.zeros(64, np.float32)}),
     "unexpected tensor 'encoder.albert_layer_groups.1.albert_layers.0.ffn.bias'"),
    ("protalbert", lambda s: s.update({"embeddings.LayerNorm.bias": np.ones(16, np.int32)}),
     "'embeddings.LayerNorm.bias' has dtype int32"),
])
def test_import_names_the_offending_tensor(family, change, message):
  config = tiny(family)
  state = random_state_dict(config, "encoder", seed=3)
  change(state)
  with pytest.raises(InputError, match=message) as e:
    hf_bert.from_hf_state_dict(state, config, path="/x/model.safetensors")
  assert str(e.value).startswith("/x/model.safetensors: ")


def test_mixed_shapes_have_no_hf_architecture():
  config = tiny("protbert", embedding_size=16)
  with pytest.raises(InputError, match="no Hugging Face architecture"):
    hf_bert.expected_hf_shapes(config)


# --- config.json -------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trip_and_transformers_reads_it(family):
  transformers = pytest.importorskip("transformers")
  config = bert.get_config(f"{family}_paper")
  for kind in hf_bert.KINDS:
    hf = hf_bert.hf_config(config, kind)
    assert hf_bert.config_from_hf(hf) == bert.BertConfig(
        **{**config.__dict__, "dtype": "float32"})
    assert hf_bert.family_of(hf) == family
    assert hf_bert.kind_of(hf, []) == kind
  hf.pop("torch_dtype")
  fields = transformers.AutoConfig.for_model(**hf).to_dict()
  assert {k: fields[k] for k in hf if k != "dtype"} == {k: v for k, v in hf.items()
                                                         if k != "dtype"}


def test_released_protbert_config_is_accepted():
  """config.json as Rostlab/prot_bert (and prot_bert_bfd) have it."""
  released = {
      "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.0,
      "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 1024,
      "initializer_range": 0.02, "intermediate_size": 4096, "max_position_embeddings": 40000,
      "num_attention_heads": 16, "num_hidden_layers": 30, "type_vocab_size": 2,
      "vocab_size": 30}
  # No model_type (transformers 2): the architecture tells.
  config = hf_bert.config_from_hf(released)
  assert config == bert.get_config("protbert_paper", dtype="float32")
  assert hf_bert.kind_of(released, []) == "masked_lm"
  assert hf_bert.family_of(released) == "protbert"
  with pytest.raises(InputError, match="'model_type' is missing"):
    hf_bert.config_from_hf(dict(released, architectures=["T5Model"]))


@pytest.mark.parametrize("changes, key", [
    (dict(model_type="roberta"), "model_type"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(hidden_act="relu"), "hidden_act"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(num_attention_heads="2"), "num_attention_heads"),
    (dict(num_attention_heads=3), "num_attention_heads"),
    (dict(max_position_embeddings=None), "max_position_embeddings"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings"),
    (dict(model_type="albert", embedding_size=16, num_hidden_groups=2), "num_hidden_groups"),
    (dict(model_type="albert"), "embedding_size"),
])
def test_config_not_supported_names_the_key(changes, key):
  hf = hf_bert.hf_config(tiny("protbert"), "encoder")
  hf.update(changes)
  hf = {k: v for k, v in hf.items() if v is not None or k != "max_position_embeddings"}
  with pytest.raises(InputError, match=f"config.json: config key '{key}'"):
    hf_bert.config_from_hf(hf, path="config.json")
