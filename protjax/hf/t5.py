"""ProtT5 <-> Hugging Face T5: the weight mapping, config.json and tokenizer (numpy only).

protjax keeps attention kernels split by head (`[embed, heads, kv]`), Hugging
Face keeps `torch.nn.Linear` weights (`[out_features, in_features]`), so every
matrix is transposed and reshaped on the way; layer-norm scales and the shared
embedding map one to one. Nothing here imports torch, transformers or jax: the
functions take and return nested dicts of `np.ndarray`, so the same code serves
export (`protjax.export.export_hf`), import (`protjax.export.import_hf`) and
tests with hand-built trees. The interface every family's module shares is
described in `protjax.hf`.

Hugging Face key layout (T5 v1.0, `feed_forward_proj="relu"`, tied embedding):
```
shared.weight                                                [vocab, embed]
encoder.block.{i}.layer.0.SelfAttention.{q,k,v}.weight       [heads*kv, embed]
encoder.block.{i}.layer.0.SelfAttention.o.weight             [embed, heads*kv]
encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
encoder.block.{i}.layer.0.layer_norm.weight                  [embed]
encoder.block.{i}.layer.1.DenseReluDense.wi.weight           [mlp, embed]
encoder.block.{i}.layer.1.DenseReluDense.wo.weight           [embed, mlp]
encoder.block.{i}.layer.1.layer_norm.weight                  [embed]
encoder.final_layer_norm.weight                              [embed]
decoder.block.{i}.layer.0.SelfAttention.*  / layer.0.layer_norm  (self-attention)
decoder.block.{i}.layer.1.EncDecAttention.* / layer.1.layer_norm (cross-attention)
decoder.block.{i}.layer.2.DenseReluDense.*  / layer.2.layer_norm (MLP)
decoder.final_layer_norm.weight
```
`encoder.embed_tokens.weight`, `decoder.embed_tokens.weight` and
`lm_head.weight` are tied aliases of `shared.weight`: `save_pretrained` leaves
them out and `from_pretrained` re-ties them, so export writes only
`shared.weight` and import accepts the aliases only when they equal it.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from protjax.errors import InputError
from protjax.hf import get_path, set_path, validated_config

MODEL_TYPES = ("t5",)
ENCODER = "encoder"
ENCODER_DECODER = "encoder_decoder"
KINDS = (ENCODER, ENCODER_DECODER)

SHARED = "shared.weight"
# Tied aliases of `shared.weight` that some saved checkpoints still carry.
TIED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
# Hugging Face's T5ForConditionalGeneration ignores this one on load (cross
# attention has no position bias); older conversions may have written it.
IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

# protjax attention module name -> Hugging Face (layer index, module name), per stack.
_ENCODER_ATTENTION = {"attention": (0, "SelfAttention")}
_DECODER_ATTENTION = {"self_attention": (0, "SelfAttention"),
                      "encoder_decoder_attention": (1, "EncDecAttention")}
# protjax layer-norm name -> Hugging Face layer index, per stack.
_ENCODER_NORMS = {"pre_attention_layer_norm": 0, "pre_mlp_layer_norm": 1}
_DECODER_NORMS = {"pre_self_attention_layer_norm": 0, "pre_cross_attention_layer_norm": 1,
                  "pre_mlp_layer_norm": 2}
_MLP_LAYER = {ENCODER: 1, "decoder": 2}
_FINAL_NORM = {ENCODER: "encoder_norm", "decoder": "decoder_norm"}


def _dims(config: Any) -> dict[str, int]:
  """The sizes the mapping needs, read from a protjax `T5Config` (duck-typed)."""
  return dict(vocab=int(config.vocab_size), embed=int(config.d_model), mlp=int(config.d_ff),
              heads=int(config.num_heads), kv=int(config.d_kv),
              buckets=int(config.relative_attention_num_buckets),
              encoder_layers=int(config.num_encoder_layers),
              decoder_layers=int(config.num_decoder_layers))


def _stacks(kind: str) -> tuple[str, ...]:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return (ENCODER,) if kind == ENCODER else (ENCODER, "decoder")


def _entries(config: Any, kind: str) -> Iterator[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
  """Every tensor: (HF key, protjax path, transform name, HF shape).

  Transforms: "copy" (same layout), "linear_in" (HF `[heads*kv, embed]` <->
  protjax `[embed, heads, kv]`), "linear_out" (HF `[embed, heads*kv]` <->
  protjax `[heads, kv, embed]`), "transpose" (2-D transpose).
  """
  d = _dims(config)
  inner = d["heads"] * d["kv"]
  yield SHARED, ("token_embedder", "embedding"), "copy", (d["vocab"], d["embed"])
  for stack in _stacks(kind):
    attention = _ENCODER_ATTENTION if stack == ENCODER else _DECODER_ATTENTION
    norms = _ENCODER_NORMS if stack == ENCODER else _DECODER_NORMS
    yield (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           (stack, "relpos_bias", "rel_embedding"), "transpose", (d["buckets"], d["heads"]))
    for i in range(d[f"{stack}_layers"]):
      block = f"{stack}.block.{i}.layer"
      layer = (stack, f"layers_{i}")
      for name, hf_index in norms.items():
        yield f"{block}.{hf_index}.layer_norm.weight", layer + (name, "scale"), "copy", (d["embed"],)
      for name, (hf_index, hf_name) in attention.items():
        for proj in ("query", "key", "value"):
          yield (f"{block}.{hf_index}.{hf_name}.{proj[0]}.weight", layer + (name, proj, "kernel"),
                 "linear_in", (inner, d["embed"]))
        yield (f"{block}.{hf_index}.{hf_name}.o.weight", layer + (name, "out", "kernel"),
               "linear_out", (d["embed"], inner))
      mlp = f"{block}.{_MLP_LAYER[stack]}.DenseReluDense"
      yield f"{mlp}.wi.weight", layer + ("mlp", "wi", "kernel"), "transpose", (d["mlp"], d["embed"])
      yield f"{mlp}.wo.weight", layer + ("mlp", "wo", "kernel"), "transpose", (d["embed"], d["mlp"])
    yield (f"{stack}.final_layer_norm.weight", (stack, _FINAL_NORM[stack], "scale"), "copy",
           (d["embed"],))


def expected_hf_shapes(config: Any, kind: str) -> dict[str, tuple[int, ...]]:
  """HF key -> shape of every tensor a `kind` model of `config` has (tied aliases excluded)."""
  return {key: shape for key, _, _, shape in _entries(config, kind)}


def _to_hf(x: np.ndarray, transform: str, heads: int, kv: int) -> np.ndarray:
  if transform == "copy":
    return x
  if transform == "transpose":
    return x.T
  if transform == "linear_in":  # [embed, heads, kv] -> [heads*kv, embed]
    return x.reshape(x.shape[0], heads * kv).T
  if transform == "linear_out":  # [heads, kv, embed] -> [embed, heads*kv]
    return x.reshape(heads * kv, x.shape[-1]).T
  raise AssertionError(transform)


def _from_hf(x: np.ndarray, transform: str, heads: int, kv: int) -> np.ndarray:
  if transform == "copy":
    return x
  if transform == "transpose":
    return x.T
  if transform == "linear_in":  # [heads*kv, embed] -> [embed, heads, kv]
    return x.T.reshape(x.shape[1], heads, kv)
  if transform == "linear_out":  # [embed, heads*kv] -> [heads, kv, embed]
    return x.T.reshape(heads, kv, x.shape[0])
  raise AssertionError(transform)


def params_kind(params: Mapping[str, Any]) -> str:
  """"encoder_decoder" when the tree has a decoder, else "encoder"."""
  return ENCODER_DECODER if "decoder" in params else ENCODER


def to_hf_state_dict(params: Mapping[str, Any], config: Any, *, kind: Optional[str] = None,
                     dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """protjax params -> Hugging Face T5 state dict (contiguous numpy arrays of `dtype`).

  Args:
    params: the protjax tree (`variables['params']`), arrays of any kind that
      `np.asarray` accepts (numpy, jax).
    config: protjax `T5Config` (only the sizes are read).
    kind: "encoder" writes the `T5EncoderModel` tensors only (a decoder in
      `params` is dropped); "encoder_decoder" also the decoder. Default: what
      `params` holds.
    dtype: dtype of the written tensors (float32, or float16 like the released
      half-precision encoder).
  Returns:
    `{hf_key: array}` with only `shared.weight` for the tied embedding.
  """
  kind = kind or params_kind(params)
  d = _dims(config)
  out = {}
  for key, path, transform, shape in _entries(config, kind):
    try:
      x = np.asarray(get_path(params, path))
    except KeyError as e:
      raise ValueError(f"params have no {e.args[0]} (needed for {key})") from None
    y = _to_hf(x, transform, d["heads"], d["kv"])
    if y.shape != shape:
      raise ValueError(f"params {'/'.join(path)} has shape {x.shape}, which does not give "
                       f"{key} {shape}")
    out[key] = np.ascontiguousarray(y.astype(dtype, copy=False))
  return out


def from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: Any, kind: str, *,
                       path: Optional[str] = None) -> dict[str, Any]:
  """Hugging Face T5 state dict -> protjax params (float32 numpy), validated.

  Args:
    state_dict: `{hf_key: array}` as `safetensors.numpy.load_file` gives it.
    config: protjax `T5Config` the tensors must fit.
    kind: "encoder" (decoder tensors, if any, are ignored) or "encoder_decoder".
    path: the file the tensors came from, for error messages.
  Raises:
    InputError naming the offending key: a missing tensor, a wrong shape, a
    tied alias that differs from `shared.weight`, or an unexpected tensor
    (e.g. a bias or a gated `wi_0`), which this architecture would silently drop.
  """
  d = _dims(config)
  state = dict(state_dict)
  if SHARED not in state and "encoder.embed_tokens.weight" in state:
    state[SHARED] = state["encoder.embed_tokens.weight"]
  for alias in TIED_ALIASES:
    if alias in state and alias != SHARED and SHARED in state:
      if kind == ENCODER and alias != "encoder.embed_tokens.weight":
        continue
      if not np.array_equal(state[alias], state[SHARED]):
        raise InputError(f"tensor {alias!r} differs from 'shared.weight': the embedding is not "
                         "tied, which ProtT5 requires", path=path)
  params: dict[str, Any] = {}
  used = set(TIED_ALIASES) | set(IGNORED_KEYS)
  for key, ppath, transform, shape in _entries(config, kind):
    if key not in state:
      raise InputError(f"missing tensor {key!r} (expected shape {list(shape)})", path=path)
    x = np.asarray(state[key])
    if tuple(x.shape) != shape:
      raise InputError(f"tensor {key!r} has shape {list(x.shape)}, expected {list(shape)} "
                       "from config.json", path=path)
    if not np.issubdtype(x.dtype, np.floating):
      raise InputError(f"tensor {key!r} has dtype {x.dtype}, expected a float type", path=path)
    set_path(params, ppath, np.ascontiguousarray(
        _from_hf(x.astype(np.float32), transform, d["heads"], d["kv"])))
    used.add(key)
  for key in sorted(state):
    if key in used or (kind == ENCODER and key.startswith("decoder.")):
      continue
    raise InputError(f"unexpected tensor {key!r}: not part of a ProtT5 (T5 v1.0, relu, no bias) "
                     f"{kind.replace('_', '-')} model", path=path)
  return params


# --- config.json ------------------------------------------------------------
# Settings every ProtT5 (T5 v1.0) Hugging Face config must have; import refuses
# anything else rather than produce a model that computes something different.
_REQUIRED_HF_SETTINGS = {
    "feed_forward_proj": "relu",
    "is_gated_act": False,
    "dense_act_fn": "relu",
    "tie_word_embeddings": True,
    "scale_decoder_outputs": True,
    "model_type": "t5",
}
PROTT5_VOCAB_SIZE = 128
_ARCHITECTURES = {ENCODER: "T5EncoderModel", ENCODER_DECODER: "T5ForConditionalGeneration"}


def hf_config(config: Any, kind: str, dtype: str = "float32") -> dict[str, Any]:
  """The Hugging Face `T5Config` dict (config.json) of a protjax config.

  Written as transformers 5 writes it, plus `torch_dtype` so transformers 4
  reads the dtype too (5 accepts and drops it silently).
  """
  _stacks(kind)
  return {
      "architectures": [_ARCHITECTURES[kind]],
      "classifier_dropout": 0.0,
      "d_ff": int(config.d_ff),
      "d_kv": int(config.d_kv),
      "d_model": int(config.d_model),
      "decoder_start_token_id": 0,
      "dense_act_fn": "relu",
      "dropout_rate": float(config.dropout_rate),
      "dtype": dtype,
      "eos_token_id": 1,
      "feed_forward_proj": "relu",
      "initializer_factor": 1.0,
      "is_decoder": False,
      "is_encoder_decoder": kind == ENCODER_DECODER,
      "is_gated_act": False,
      "layer_norm_epsilon": float(config.layer_norm_epsilon),
      "model_type": "t5",
      "num_decoder_layers": int(config.num_decoder_layers),
      "num_heads": int(config.num_heads),
      "num_layers": int(config.num_encoder_layers),
      "pad_token_id": 0,
      "relative_attention_max_distance": int(config.relative_attention_max_distance),
      "relative_attention_num_buckets": int(config.relative_attention_num_buckets),
      "scale_decoder_outputs": True,
      "tie_word_embeddings": True,
      "torch_dtype": dtype,
      "use_cache": kind == ENCODER_DECODER,
      "vocab_size": int(config.vocab_size),
  }


def config_fields_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None) -> dict[str, Any]:
  """Validated protjax `T5Config` fields from a Hugging Face T5 config.json dict.

  Raises:
    InputError naming the offending key when the model is not ProtT5-shaped:
    gated or non-ReLU feed-forward, untied embedding, a vocabulary other than
    128, or a missing / non-positive size.
  """
  for key, want in _REQUIRED_HF_SETTINGS.items():
    if key in hf and hf[key] != want:
      raise InputError(f"config key {key!r} is {hf[key]!r}, ProtT5 needs {want!r} "
                       "(original T5 v1.0: ReLU feed-forward, no gating, tied embedding)",
                       path=path)
  if hf.get("vocab_size") != PROTT5_VOCAB_SIZE:
    raise InputError(f"config key 'vocab_size' is {hf.get('vocab_size')!r}, ProtT5 needs "
                     f"{PROTT5_VOCAB_SIZE}", path=path)

  def size(key: str, default: Any = None) -> int:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise InputError(f"config key {key!r} must be a positive integer, got {value!r}", path=path)
    return value

  def number(key: str, default: float) -> float:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise InputError(f"config key {key!r} must be a non-negative number, got {value!r}",
                       path=path)
    return float(value)

  num_layers = size("num_layers")
  return dict(
      vocab_size=PROTT5_VOCAB_SIZE,
      d_model=size("d_model"),
      d_ff=size("d_ff"),
      num_heads=size("num_heads"),
      d_kv=size("d_kv"),
      num_encoder_layers=num_layers,
      num_decoder_layers=(size("num_decoder_layers")
                          if hf.get("num_decoder_layers") is not None else num_layers),
      relative_attention_num_buckets=size("relative_attention_num_buckets", 32),
      relative_attention_max_distance=size("relative_attention_max_distance", 128),
      dropout_rate=number("dropout_rate", 0.1),
      layer_norm_epsilon=number("layer_norm_epsilon", 1e-6),
  )


def family_of(hf: Mapping[str, Any]) -> str:
  """Every T5 directory protjax reads is ProtT5."""
  del hf
  return "prott5"


def config_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None):
  """The protjax `T5Config` of a Hugging Face T5 config.json dict (validated)."""
  from protjax.models.t5 import T5Config  # deferred: the model pulls in jax/flax
  return validated_config(T5Config, config_fields_from_hf(hf, path=path), path=path)


def kind_of(hf: Mapping[str, Any], state_keys, *, path: Optional[str] = None) -> str:
  """"encoder_decoder" for a T5ForConditionalGeneration / T5Model, "encoder" for T5EncoderModel."""
  architectures = hf.get("architectures") or []
  # T5WithLMHeadModel: the transformers-2 name the released prot_t5_xl_* configs carry.
  if any(a in ("T5ForConditionalGeneration", "T5WithLMHeadModel", "T5Model")
         for a in architectures):
    return ENCODER_DECODER
  if "T5EncoderModel" in architectures:
    return ENCODER
  if architectures:
    raise InputError(f"config key 'architectures' is {architectures!r}; expected "
                     "T5ForConditionalGeneration or T5EncoderModel", path=path)
  # No architectures recorded: tell by the tensors.
  return ENCODER_DECODER if any(k.startswith("decoder.") for k in state_keys) else ENCODER


# --- tokenizer ---------------------------------------------------------------
def _tokenizer_json(vocabulary) -> str:
  """tokenizer.json of the ProtT5 tokenizer, built without any sentencepiece model.

  A Unigram model whose pieces are `▁A`, `▁L`, ... (one per residue) behind a
  whitespace + Metaspace pre-tokenizer, as the released ProtT5 tokenizer: for
  space-separated residues ("M K T") every residue is one piece, and `</s>` is
  appended by the template post-processor. transformers 5's `T5Tokenizer`
  rebuilds exactly this pipeline from the Unigram vocabulary, so `AutoTokenizer`,
  `T5Tokenizer` and `PreTrainedTokenizerFast` all give the same ids.

  Like the released tokenizer (and unlike protjax's vocabulary, which
  normalises), it expects space-separated upper-case residues and keeps
  U Z O B apart: map those to X first (`re.sub(r"[UZOB]", "X", seq)`), as
  protjax does by default, and the ids equal protjax's.
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

  tokens = vocabulary.tokens()
  residues = [t for t in tokens if not t.startswith("<")]
  residue_score = -math.log(len(residues))
  pieces = [(t, 0.0) if t.startswith("<") else ("\u2581" + t, residue_score) for t in tokens]
  tokenizer = Tokenizer(models.Unigram(pieces, unk_id=vocabulary.unk_id, byte_fallback=False))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.WhitespaceSplit(),
      pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
  tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always",
                                         split=True)
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in tokens if t.startswith("<")])
  eos = vocabulary.suffix_ids[0]
  tokenizer.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
  return tokenizer.to_str(pretty=True)


def _sentencepiece_model(vocabulary) -> bytes:
  """spiece.model: a SentencePiece Unigram model with exactly protjax's ids.

  transformers 4's slow `T5Tokenizer` (the ProtTrans README's
  `T5Tokenizer.from_pretrained(dir, do_lower_case=False)`) reads only this
  file. Its pieces are the base vocabulary (`<pad>`, `</s>`, `<unk>`, `▁A`,
  `▁L`, ...); T5Tokenizer appends the 100 `<extra_id_N>` itself, in the
  order protjax uses. Identity normalisation with a dummy prefix, so "M K T"
  splits into one piece per residue, as the released model does.
  """
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=import-outside-toplevel
  types = {"<pad>": pb.ModelProto.SentencePiece.CONTROL,
           "</s>": pb.ModelProto.SentencePiece.CONTROL,
           "<unk>": pb.ModelProto.SentencePiece.UNKNOWN}
  base = [t for t in vocabulary.tokens() if not t.startswith("<extra_id_")]
  residue_score = -math.log(len(base) - len(types))
  model = pb.ModelProto()
  for token in base:
    piece = model.pieces.add()
    piece.piece = token if token in types else "\u2581" + token
    piece.score = 0.0 if token in types else residue_score
    piece.type = types.get(token, pb.ModelProto.SentencePiece.NORMAL)
  spec = model.trainer_spec
  spec.model_type = pb.TrainerSpec.UNIGRAM
  spec.vocab_size = len(base)
  spec.pad_id, spec.eos_id, spec.unk_id, spec.bos_id = (
      base.index("<pad>"), base.index("</s>"), base.index("<unk>"), -1)
  model.normalizer_spec.name = "identity"
  model.normalizer_spec.add_dummy_prefix = True
  model.normalizer_spec.remove_extra_whitespaces = True
  model.normalizer_spec.escape_whitespaces = True
  return model.SerializeToString()


def write_tokenizer(directory: str, vocabulary) -> None:
  """Writes tokenizer.json, spiece.model, tokenizer_config.json and special_tokens_map.json."""
  import json  # pylint: disable=import-outside-toplevel

  def write_json(name, obj):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")

  with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(_tokenizer_json(vocabulary))
  with open(os.path.join(directory, "spiece.model"), "wb") as f:
    f.write(_sentencepiece_model(vocabulary))
  extra = [t for t in vocabulary.tokens() if t.startswith("<extra_id_")]
  extra.sort(key=lambda t: int(t[len("<extra_id_"):-1]))
  specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "additional_special_tokens": extra}
  write_json("tokenizer_config.json", dict(
      specials, tokenizer_class="T5Tokenizer", extra_ids=len(extra), do_lower_case=False,
      model_max_length=1_000_000_000, clean_up_tokenization_spaces=False))
  write_json("special_tokens_map.json", specials)
