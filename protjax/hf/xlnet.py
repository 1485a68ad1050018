"""ProtXLNet parameters <-> Hugging Face XLNet state dicts and config.json (numpy only).

Kinds: "encoder" is `XLNetModel` (keys without a prefix); "lm_head" is
`XLNetLMHeadModel` (keys under `transformer.`, plus `lm_loss.bias`; its
`lm_loss.weight` is tied to the word embedding: `save_pretrained` leaves it
out, so export writes none and import accepts it only when equal).

Hugging Face key layout (`L` = `layer.{i}`), against protjax's
(`protjax.models.xlnet`):
```
word_embedding.weight                  [vocab, d]    word_embedding/embedding
mask_emb                               [1, 1, d]     mask_emb [d]
L.rel_attn.{q,k,v,r}                   [d, n, dh]    layers_{i}/rel_attn/{q,k,v,r}/kernel
L.rel_attn.o                           [d, n, dh]    layers_{i}/rel_attn/o/kernel [n, dh, d]
L.rel_attn.{r_w_bias,r_r_bias}         [n, dh]       layers_{i}/rel_attn/biases/...
L.rel_attn.r_s_bias                    [n, dh]       layers_{i}/rel_attn/r_s_bias
L.rel_attn.seg_embed                   [2, n, dh]    layers_{i}/rel_attn/seg_embed
L.rel_attn.layer_norm.{weight,bias}    [d]           layers_{i}/rel_attn/layer_norm
L.ff.layer_1.{weight,bias}             [d_inner, d]  layers_{i}/ff/layer_1 (transposed)
L.ff.layer_2.{weight,bias}             [d, d_inner]  layers_{i}/ff/layer_2 (transposed)
L.ff.layer_norm.{weight,bias}          [d]           layers_{i}/ff/layer_norm
lm_loss.bias                           [vocab]       lm_loss/bias
```
config.json is transformers' `XLNetConfig` plus `protjax_xlnet` (the
training window `target_length` and K `partial_prediction`, which
transformers has no keys for); a directory without it gets Table 2's 512 and
XLNet's 6. Import refuses what protjax does not compute: `attn_type` other
than "bi", `bi_data`, `same_length`, an activation other than GELU.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import numpy as np

from protjax.errors import InputError
from protjax.hf import bert as hf_bert
from protjax.hf import validated_config

MODEL_TYPES = ("xlnet",)
ENCODER, LM_HEAD = "encoder", "lm_head"
KINDS = (ENCODER, LM_HEAD)
PREFIX = "transformer."
PROTJAX_KEY = "protjax_xlnet"
_ARCHITECTURES = {ENCODER: "XLNetModel", LM_HEAD: "XLNetLMHeadModel"}
_HEAD = "lm_loss."
_TIED = {"lm_loss.weight": ("word_embedding.weight", ("word_embedding", "embedding"))}
_EXTRA_DEFAULTS = {"target_length": 512, "partial_prediction": 6}


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def dims(config: Any) -> dict[str, int]:
  """The sizes the mapping needs, from a protjax `XLNetConfig` (duck-typed)."""
  hidden, heads = int(config.hidden_size), int(config.num_heads)
  return dict(vocab=int(config.vocab_size), hidden=hidden, heads=heads, kv=hidden // heads,
              mlp=int(config.intermediate_size), layers=int(config.num_layers))


def _entries(config: Any, kind: str) -> Iterator[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
  """Every tensor: (HF key as `save_pretrained` writes it, protjax path, transform, HF shape)."""
  _check_kind(kind)
  d = dims(config)
  h, n, kv = d["hidden"], d["heads"], d["kv"]
  p = PREFIX if kind == LM_HEAD else ""
  yield f"{p}word_embedding.weight", ("word_embedding", "embedding"), "copy", (d["vocab"], h)
  yield f"{p}mask_emb", ("mask_emb",), "vector_3d", (1, 1, h)
  for i in range(d["layers"]):
    hf_layer, layer = f"{p}layer.{i}", (f"layers_{i}",)
    attn = layer + ("rel_attn",)
    for name in ("q", "k", "v", "r"):
      yield f"{hf_layer}.rel_attn.{name}", attn + (name, "kernel"), "copy", (h, n, kv)
    yield f"{hf_layer}.rel_attn.o", attn + ("o", "kernel"), "heads_in_last", (h, n, kv)
    for name in ("r_r_bias", "r_w_bias"):
      yield f"{hf_layer}.rel_attn.{name}", attn + ("biases", name), "copy", (n, kv)
    yield f"{hf_layer}.rel_attn.r_s_bias", attn + ("r_s_bias",), "copy", (n, kv)
    yield f"{hf_layer}.rel_attn.seg_embed", attn + ("seg_embed",), "copy", (2, n, kv)
    yield from hf_bert.layer_norm(f"{hf_layer}.rel_attn.layer_norm", attn + ("layer_norm",), h)
    ff = layer + ("ff",)
    yield from hf_bert.layer_norm(f"{hf_layer}.ff.layer_norm", ff + ("layer_norm",), h)
    yield from hf_bert.linear(f"{hf_layer}.ff.layer_1", ff + ("layer_1",), h, d["mlp"])
    yield from hf_bert.linear(f"{hf_layer}.ff.layer_2", ff + ("layer_2",), d["mlp"], h)
  if kind == LM_HEAD:
    yield f"{_HEAD}bias", ("lm_loss", "bias"), "copy", (d["vocab"],)


def expected_hf_shapes(config: Any, kind: str = ENCODER) -> dict[str, tuple[int, ...]]:
  """HF key -> shape of every tensor a `kind` model of `config` saves (the tied one excluded)."""
  return {key: shape for key, _, _, shape in _entries(config, kind)}


def params_kind(params: Mapping[str, Any]) -> str:
  """"lm_head" when the tree has `lm_loss`, else "encoder"."""
  return LM_HEAD if "lm_loss" in params else ENCODER


def to_hf_state_dict(params: Mapping[str, Any], config: Any, *, kind: Optional[str] = None,
                     dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """protjax params -> Hugging Face state dict (contiguous numpy arrays of `dtype`),
  exactly as `save_pretrained` writes it (no tied `lm_loss.weight`)."""
  kind = kind or params_kind(params)
  return hf_bert.state_from_entries(params, _entries(config, kind), dims(config), dtype)


def from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: Any,
                       kind: Optional[str] = None, *, path: Optional[str] = None
                       ) -> dict[str, Any]:
  """Hugging Face XLNet state dict -> protjax params (float32 numpy), validated.

  Accepts `XLNetModel`'s keys and `XLNetLMHeadModel`'s (`transformer.` +
  `lm_loss`). `kind`: "encoder" (an `lm_loss`, if any, is ignored),
  "lm_head" (it must be there), or None: what the tensors hold. InputError
  naming the key for a missing tensor, a wrong shape or dtype, an untied
  `lm_loss.weight` or an unexpected tensor.
  """
  state = hf_bert.strip_prefix(state_dict, PREFIX, path)
  has_head = f"{_HEAD}bias" in state
  kind = (LM_HEAD if has_head else ENCODER) if kind is None else kind
  _check_kind(kind)
  prefix = PREFIX if kind == LM_HEAD else ""
  params, used = hf_bert.params_from_entries(state, _entries(config, kind), dims(config),
                                             prefix=prefix, path=path)
  if kind == LM_HEAD:
    used |= hf_bert.check_tied(state, _TIED, params, path, "ProtXLNet")
  for key in sorted(state):
    if key in used or (kind == ENCODER and key.startswith(_HEAD)):
      continue
    raise InputError(f"unexpected tensor {key!r}: not part of an XLNet {kind} of this config",
                     path=path)
  return params


# --- config.json ------------------------------------------------------------

def hf_config(config: Any, kind: str = ENCODER, dtype: str = "float32") -> dict[str, Any]:
  """The Hugging Face `XLNetConfig` dict (config.json) of a protjax config, as
  transformers 5 writes it, plus `torch_dtype` (transformers 4 reads the dtype
  from it) and `protjax_xlnet`."""
  _check_kind(kind)
  fields = {
      "architectures": [_ARCHITECTURES[kind]],
      "attn_type": "bi",
      "bi_data": False,
      "bos_token_id": 2,
      "clamp_len": int(config.clamp_len),
      "d_head": int(config.hidden_size // config.num_heads),
      "d_inner": int(config.intermediate_size),
      "d_model": int(config.hidden_size),
      "dropout": float(config.dropout_rate),
      "dtype": dtype,
      "end_n_top": 5,
      "eos_token_id": 3,
      "ff_activation": config.hidden_act,
      "initializer_range": float(config.initializer_range),
      "layer_norm_eps": float(config.layer_norm_epsilon),
      "mem_len": int(config.mem_len) if config.mem_len > 0 else None,
      "model_type": "xlnet",
      "n_head": int(config.num_heads),
      "n_layer": int(config.num_layers),
      "pad_token_id": 0,
      PROTJAX_KEY: {"partial_prediction": int(config.partial_prediction),
                    "target_length": int(config.target_length)},
      "reuse_len": None,
      "same_length": False,
      "start_n_top": 5,
      "summary_activation": "tanh",
      "summary_last_dropout": 0.1,
      "summary_type": "last",
      "summary_use_proj": True,
      "tie_word_embeddings": True,
      "torch_dtype": dtype,
      "untie_r": True,
      "use_mems_eval": True,
      "use_mems_train": False,
      "vocab_size": int(config.vocab_size),
  }
  return dict(sorted(fields.items()))


def _extra(hf: Mapping[str, Any], path: Optional[str]) -> dict[str, int]:
  extra = hf.get(PROTJAX_KEY, {})
  if not isinstance(extra, Mapping):
    raise InputError(f"config key {PROTJAX_KEY!r} must be an object", path=path)
  unknown = sorted(set(extra) - set(_EXTRA_DEFAULTS))
  if unknown:
    raise InputError(f"unknown config key {PROTJAX_KEY}.{unknown[0]}", path=path)
  return {name: hf_bert.hf_size(extra, name, default, path=path)
          for name, default in _EXTRA_DEFAULTS.items()}


def config_fields_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None
                          ) -> dict[str, Any]:
  """Validated protjax `XLNetConfig` fields from a Hugging Face config.json dict."""
  if hf.get("model_type", "xlnet") not in MODEL_TYPES:
    raise InputError(f"config key 'model_type' is {hf.get('model_type')!r}, expected 'xlnet'",
                     path=path)
  hf_bert.require(hf, "attn_type", "bi", "bi", path, "bidirectional attention")
  hf_bert.require(hf, "bi_data", False, False, path, "one direction of relative positions")
  hf_bert.require(hf, "same_length", False, False, path, "every query sees the whole memory")
  hf_bert.require(hf, "untie_r", True, True, path, "per-layer biases, as HF's modules")
  hf_bert.require(hf, "tie_word_embeddings", True, True, path,
                  "the output layer is the word embedding")
  act = hf.get("ff_activation", "gelu")
  if act not in hf_bert.ACTIVATIONS:
    raise InputError(f"config key 'ff_activation' is {act!r}, protjax supports "
                     f"{hf_bert.ACTIVATIONS}", path=path)
  size = lambda key, default=None: hf_bert.hf_size(hf, key, default, path=path)
  hidden, heads = size("d_model"), size("n_head")
  if hidden % heads:
    raise InputError(f"config key 'n_head' ({heads}) does not divide 'd_model' ({hidden})",
                     path=path)
  if size("d_head", hidden // heads) != hidden // heads:
    raise InputError(f"config key 'd_head' is {hf['d_head']}, protjax needs d_model / n_head "
                     f"= {hidden // heads}", path=path)
  mem_len = hf.get("mem_len")
  if mem_len is not None and (isinstance(mem_len, bool) or not isinstance(mem_len, int)
                              or mem_len < 0):
    raise InputError(f"config key 'mem_len' must be null or a non-negative integer, got "
                     f"{mem_len!r}", path=path)
  clamp_len = hf.get("clamp_len", -1)
  if isinstance(clamp_len, bool) or not isinstance(clamp_len, int):
    raise InputError(f"config key 'clamp_len' must be an integer, got {clamp_len!r}", path=path)
  return dict(
      vocab_size=size("vocab_size"), hidden_size=hidden, num_layers=size("n_layer"),
      num_heads=heads, intermediate_size=size("d_inner"), hidden_act=act,
      layer_norm_epsilon=hf_bert.hf_number(hf, "layer_norm_eps", 1e-12, path=path),
      dropout_rate=hf_bert.hf_number(hf, "dropout", 0.1, path=path),
      initializer_range=hf_bert.hf_number(hf, "initializer_range", 0.02, path=path),
      mem_len=0 if mem_len is None else mem_len, clamp_len=max(clamp_len, -1),
      **_extra(hf, path))


def config_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None):
  """The protjax `XLNetConfig` of a Hugging Face XLNet config.json dict (validated)."""
  from protjax.models.xlnet import XLNetConfig  # deferred: the model pulls in jax/flax
  return validated_config(XLNetConfig, config_fields_from_hf(hf, path=path), path=path)


def family_of(hf: Mapping[str, Any]) -> str:
  """"protxlnet": every XLNet config.json."""
  del hf
  return "protxlnet"


def kind_of(hf: Mapping[str, Any], state_keys, *, path: Optional[str] = None) -> str:
  """"lm_head" for `XLNetLMHeadModel`, "encoder" for `XLNetModel`; else by the tensors."""
  architectures = hf.get("architectures") or []
  for kind, name in _ARCHITECTURES.items():
    if name in architectures:
      return kind
  if architectures:
    raise InputError(f"config key 'architectures' is {architectures!r}; expected one of "
                     f"{sorted(_ARCHITECTURES.values())}", path=path)
  return LM_HEAD if any(k in (f"{_HEAD}bias", f"{_HEAD}weight") for k in state_keys) else ENCODER


# --- tokenizer ---------------------------------------------------------------
def write_tokenizer(directory: str, vocabulary) -> None:
  """tokenizer.json (ProtBert's tokens, XLNet's framing `residues [SEP] [CLS]`
  by its post-processor), tokenizer_config.json and special_tokens_map.json,
  giving exactly `vocabulary`'s ids with `AutoTokenizer` and
  `PreTrainedTokenizerFast` (the token list is not a SentencePiece model,
  so no `XLNetTokenizer`). Padding is on the left, as XLNet's."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  names = vocabulary.to_dict()
  with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(hf_bert._tokenizer_json(vocabulary))  # pylint: disable=protected-access
  specials = {"unk_token": names["unk_token"], "pad_token": names["pad_token"]}
  suffix = list(names["suffix"])
  if len(suffix) == 2:
    specials.update(sep_token=suffix[0], cls_token=suffix[1])
  if "[MASK]" in vocabulary.tokens():
    specials["mask_token"] = "[MASK]"
  config = dict(specials, tokenizer_class="PreTrainedTokenizerFast", padding_side="left",
                model_max_length=1_000_000_000, clean_up_tokenization_spaces=False)
  for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
