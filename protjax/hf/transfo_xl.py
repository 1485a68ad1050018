"""ProtTXL parameters <-> Transformer-XL state dicts (numpy only): protjax's own export.

Transformers 5 no longer ships Transformer-XL, so this export is protjax's
own. Its tensor names and config.json are Hugging Face 4.x's
`TransfoXLModel` / `TransfoXLLMHeadModel` ones (with `adaptive=False,
cutoffs=[], div_val=1`), so a directory also loads with transformers <= 4.34
(and the test fixture, made with 4.34.1, is read through this module).

Tensor names (`{i}` = layer; d = hidden, H = heads x head size, I = inner):
```
word_emb.emb_layers.0.weight                  [vocab, d]
pos_emb.inv_freq                              [d / 2]  (the sinusoids' frequencies, a buffer)
r_w_bias, r_r_bias                            [heads, head]  (untie_r false: one pair)
layers.{i}.dec_attn.r_w_bias, .r_r_bias       [heads, head]  (untie_r true: per layer)
layers.{i}.dec_attn.qkv_net.weight            [3H, d]  (query, key, value rows, in that order)
layers.{i}.dec_attn.r_net.weight              [H, d]
layers.{i}.dec_attn.o_net.weight              [d, H]
layers.{i}.dec_attn.layer_norm.{weight,bias}  [d]
layers.{i}.pos_ff.CoreNet.0.{weight,bias}     [I, d], [I]
layers.{i}.pos_ff.CoreNet.3.{weight,bias}     [d, I], [d]
layers.{i}.pos_ff.layer_norm.{weight,bias}    [d]
```
The language model ("lm", `TransfoXLLMHeadModel`) prefixes those with
`transformer.` and adds `crit.out_layers.0.bias` [vocab]; its
`crit.out_layers.0.weight` is tied to the word embedding (not written;
accepted on import when equal). With a shared pair of biases, the per-layer
names transformers also lists are accepted when equal to the shared pair.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import numpy as np

from protjax.errors import InputError
from protjax.hf import bert as hf_bert
from protjax.hf import validated_config

MODEL_TYPES = ("transfo-xl",)
ENCODER = "encoder"
LM = "lm"
KINDS = (ENCODER, LM)
PREFIX = "transformer."
_ARCHITECTURES = {ENCODER: "TransfoXLModel", LM: "TransfoXLLMHeadModel"}
_QKV = ("query", "key", "value")
_INV_FREQ = "pos_emb.inv_freq"
_TIED_OUT = "crit.out_layers.0.weight"
_OUT_BIAS = "crit.out_layers.0.bias"

write_tokenizer = hf_bert.write_tokenizer


def dims(config: Any) -> dict[str, int]:
  return dict(vocab=int(config.vocab_size), hidden=int(config.hidden_size),
              heads=int(config.num_heads), kv=int(config.head_size),
              mlp=int(config.intermediate_size), layers=int(config.num_layers))


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _bias_entries(hf: str, path: tuple[str, ...], d: Mapping[str, int]):
  for name in ("r_w_bias", "r_r_bias"):
    yield f"{hf}{name}", path + (name,), "copy", (d["heads"], d["kv"])


def _entries(config: Any, kind: str) -> Iterator[tuple[str, tuple[str, ...], str, tuple]]:
  """(key, protjax path, transform, shape); q/k/v as `...qkv_net.weight/<query|key|value>`."""
  _check_kind(kind)
  d = dims(config)
  p = PREFIX if kind == LM else ""
  t = ("transformer",)
  inner = d["heads"] * d["kv"]
  yield f"{p}word_emb.emb_layers.0.weight", t + ("word_embeddings", "embedding"), "copy", (
      d["vocab"], d["hidden"])
  if not config.untie_r:
    yield from _bias_entries(p, t + ("biases",), d)
  for i in range(d["layers"]):
    hf, layer = f"{p}layers.{i}.", t + (f"layers_{i}",)
    attn = layer + ("attention",)
    if config.untie_r:
      yield from _bias_entries(f"{hf}dec_attn.", attn + ("biases",), d)
    for name in _QKV:
      yield (f"{hf}dec_attn.qkv_net.weight/{name}", attn + (name, "kernel"), "linear_in",
             (inner, d["hidden"]))
    yield f"{hf}dec_attn.r_net.weight", attn + ("position", "kernel"), "linear_in", (
        inner, d["hidden"])
    yield f"{hf}dec_attn.o_net.weight", attn + ("out", "kernel"), "linear_out", (
        d["hidden"], inner)
    yield from hf_bert.layer_norm(f"{hf}dec_attn.layer_norm", layer + ("attention_layer_norm",),
                                  d["hidden"])
    yield from hf_bert.linear(f"{hf}pos_ff.CoreNet.0", layer + ("wi",), d["hidden"], d["mlp"])
    yield from hf_bert.linear(f"{hf}pos_ff.CoreNet.3", layer + ("wo",), d["mlp"], d["hidden"])
    yield from hf_bert.layer_norm(f"{hf}pos_ff.layer_norm", layer + ("mlp_layer_norm",),
                                  d["hidden"])
  if kind == LM:
    yield _OUT_BIAS, ("output_bias",), "copy", (d["vocab"],)


def inv_freq(hidden: int) -> np.ndarray:
  """The sinusoids' frequencies buffer `[hidden / 2]` float32 (as `PositionalEmbedding`)."""
  return (1.0 / (10000 ** (np.arange(0.0, hidden, 2.0) / hidden))).astype(np.float32)


def expected_hf_shapes(config: Any, kind: str = ENCODER) -> dict[str, tuple[int, ...]]:
  """Key -> shape of every tensor a `kind` export of `config` writes."""
  return dict(_merge_qkv({k: np.zeros(s, np.float32) for k, _, _, s in _entries(config, kind)},
                         dims(config), kind))


def params_kind(params: Mapping[str, Any]) -> str:
  return LM if "output_bias" in params else ENCODER


def _merge_qkv(state: dict, d: Mapping[str, int], kind: str) -> dict:
  """`...qkv_net.weight/{query,key,value}` -> one `[3H, d]` `...qkv_net.weight`, plus the
  frequencies buffer."""
  out = {}
  for key, value in state.items():
    base, _, part = key.partition("/")
    if part:
      if part == _QKV[0]:
        out[base] = np.concatenate([state[f"{base}/{n}"] for n in _QKV], axis=0)
      continue
    out[key] = value
  dtype = next(iter(state.values())).dtype
  out[(PREFIX if kind == LM else "") + _INV_FREQ] = inv_freq(d["hidden"]).astype(dtype)
  return out


def to_hf_state_dict(params: Mapping[str, Any], config: Any, *, kind: Optional[str] = None,
                     dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """protjax params -> the state dict above (contiguous numpy arrays of `dtype`)."""
  kind = kind or params_kind(params)
  d = dims(config)
  state = hf_bert.state_from_entries(params, _entries(config, kind), d, dtype)
  return {k: np.ascontiguousarray(v) for k, v in _merge_qkv(state, d, kind).items()}


def _split_qkv(state: Mapping[str, np.ndarray], d: Mapping[str, int], path: Optional[str]
               ) -> dict[str, np.ndarray]:
  inner = d["heads"] * d["kv"]
  out = {}
  for key, value in state.items():
    if key.endswith("qkv_net.weight"):
      x = np.asarray(value)
      if x.shape != (3 * inner, d["hidden"]):
        raise InputError(f"tensor {key!r} has shape {list(x.shape)}, expected "
                         f"{[3 * inner, d['hidden']]} from config.json", path=path)
      for j, name in enumerate(_QKV):
        out[f"{key}/{name}"] = x[j * inner:(j + 1) * inner]
    else:
      out[key] = value
  return out


def from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: Any,
                       kind: Optional[str] = None, *, path: Optional[str] = None
                       ) -> dict[str, Any]:
  """Transformer-XL state dict -> protjax params (float32 numpy), validated.

  Accepts `TransfoXLModel` keys and `TransfoXLLMHeadModel` ones
  (`transformer.` prefix + output bias). Raises InputError naming the key: a
  missing tensor, a wrong shape or dtype, a tied alias that differs, or an
  unexpected tensor.
  """
  d = dims(config)
  state = hf_bert.strip_prefix(state_dict, PREFIX, path)
  has_head = _OUT_BIAS in state
  kind = kind or (LM if has_head else ENCODER)
  _check_kind(kind)
  state = _split_qkv(state, d, path)
  params, used = hf_bert.params_from_entries(state, _entries(config, kind), d, prefix=PREFIX,
                                             path=path)
  used.add(_INV_FREQ)
  ties = {_TIED_OUT: (_OUT_BIAS, ("transformer", "word_embeddings", "embedding"))}
  if not config.untie_r:
    for i in range(d["layers"]):
      for name in ("r_w_bias", "r_r_bias"):
        ties[f"layers.{i}.dec_attn.{name}"] = (name, ("transformer", "biases", name))
  used |= hf_bert.check_tied(state, ties, params, path, "ProtTXL (tied output, shared u / v)")
  for key in sorted(state):
    if key in used or (kind == ENCODER and key.startswith("crit.")):
      continue
    raise InputError(f"unexpected tensor {key!r}: not part of a Transformer-XL "
                     f"{'language model' if kind == LM else 'encoder'} of this config",
                     path=path)
  return params


# --- config.json ------------------------------------------------------------

def hf_config(config: Any, kind: str = ENCODER, dtype: str = "float32") -> dict[str, Any]:
  """config.json as transformers 4.x writes a `TransfoXLConfig` (plus `tgt_len`)."""
  _check_kind(kind)
  return dict(sorted({
      "adaptive": False, "architectures": [_ARCHITECTURES[kind]], "attn_type": 0,
      "clamp_len": int(config.clamp_len), "cutoffs": [], "d_embed": int(config.hidden_size),
      "d_head": int(config.head_size), "d_inner": int(config.intermediate_size),
      "d_model": int(config.hidden_size), "div_val": 1, "dropatt":
      float(config.attention_dropout_rate), "dropout": float(config.dropout_rate),
      "eos_token_id": 3, "init": "normal", "init_range": 0.01,
      "init_std": float(config.initializer_range), "layer_norm_epsilon":
      float(config.layer_norm_epsilon), "mem_len": int(config.mem_len), "model_type":
      "transfo-xl", "n_head": int(config.num_heads), "n_layer": int(config.num_layers),
      "pad_token_id": 0, "pre_lnorm": False, "proj_init_std": 0.01,
      "proj_share_all_but_first": True, "same_length": False, "sample_softmax": -1,
      "tgt_len": int(config.segment_length), "tie_projs": [False], "tie_word_embeddings": True,
      "torch_dtype": dtype, "untie_r": bool(config.untie_r), "vocab_size":
      int(config.vocab_size)}.items()))


def config_fields_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None
                          ) -> dict[str, Any]:
  """Validated `TransfoXLConfig` fields from a Transformer-XL config.json dict."""
  if hf.get("model_type") not in MODEL_TYPES:
    raise InputError(f"config key 'model_type' is {hf.get('model_type')!r}, expected "
                     f"{MODEL_TYPES[0]!r}", path=path)
  require = lambda key, want, default, why: hf_bert.require(hf, key, want, default, path, why)
  if hf.get("adaptive", True) and hf.get("cutoffs") not in ([], None):
    raise InputError(f"config key 'cutoffs' is {hf.get('cutoffs')!r}: an adaptive softmax; "
                     "protjax needs cutoffs [] (one softmax over ~30 tokens)", path=path)
  require("div_val", 1, 1, "one embedding table")
  require("pre_lnorm", False, False, "post-LayerNorm layers, as the original")
  require("same_length", False, False, "every query sees its whole memory")
  require("attn_type", 0, 0, "relative attention with learned u and v")
  require("tie_word_embeddings", True, True, "the output layer is the word embedding")
  size = lambda key, default=None: hf_bert.hf_size(hf, key, default, path=path)
  hidden = size("d_model")
  if size("d_embed", hidden) != hidden:
    raise InputError(f"config key 'd_embed' is {hf.get('d_embed')!r}, protjax needs d_model "
                     f"({hidden}): no embedding projection", path=path)
  mem_len = hf.get("mem_len", 0)
  if isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 0:
    raise InputError(f"config key 'mem_len' must be an integer >= 0, got {mem_len!r}", path=path)
  clamp = hf.get("clamp_len", -1)
  if isinstance(clamp, bool) or not isinstance(clamp, int):
    raise InputError(f"config key 'clamp_len' must be an integer, got {clamp!r}", path=path)
  untie = hf.get("untie_r", True)
  if not isinstance(untie, bool):
    raise InputError(f"config key 'untie_r' must be true or false, got {untie!r}", path=path)
  number = lambda key, default: hf_bert.hf_number(hf, key, default, path=path)
  return dict(
      vocab_size=size("vocab_size"), hidden_size=hidden, num_layers=size("n_layer"),
      num_heads=size("n_head"), head_size=size("d_head"), intermediate_size=size("d_inner"),
      segment_length=size("tgt_len", 512), mem_len=mem_len, clamp_len=clamp, untie_r=untie,
      dropout_rate=number("dropout", 0.1), attention_dropout_rate=number("dropatt", 0.0),
      layer_norm_epsilon=number("layer_norm_epsilon", 1e-5),
      initializer_range=number("init_std", 0.02))


def config_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None):
  """The protjax `TransfoXLConfig` of a Transformer-XL config.json dict (validated)."""
  from protjax.models.transfo_xl import TransfoXLConfig  # deferred: jax/flax
  return validated_config(TransfoXLConfig, config_fields_from_hf(hf, path=path), path=path)


def family_of(hf: Mapping[str, Any]) -> str:
  return "prottxl"


def kind_of(hf: Mapping[str, Any], state_keys, *, path: Optional[str] = None) -> str:
  """"lm" for a TransfoXLLMHeadModel directory, "encoder" for TransfoXLModel."""
  architectures = hf.get("architectures") or []
  if _ARCHITECTURES[LM] in architectures:
    return LM
  if _ARCHITECTURES[ENCODER] in architectures:
    return ENCODER
  if architectures:
    raise InputError(f"config key 'architectures' is {architectures!r}; expected "
                     f"{_ARCHITECTURES[LM]} or {_ARCHITECTURES[ENCODER]}", path=path)
  return LM if any(k == _OUT_BIAS or k.startswith(PREFIX) for k in state_keys) else ENCODER
