"""ProtBert / ProtAlbert parameters <-> Hugging Face BERT / ALBERT state dicts (numpy only).

protjax keeps attention kernels split by head (`[embed, heads, kv]`, biases
`[heads, kv]`), Hugging Face keeps `torch.nn.Linear` weights (`[out, in]`,
biases `[out]`), so matrices are transposed and reshaped on the way; tables,
LayerNorms and the other biases map one to one. Nothing here imports torch,
transformers or jax (the functions take and return nested dicts of
`np.ndarray`), like `protjax.hf.t5`. The entry builders (`embedding_entries`,
`layer_entries`, `linear`, `layer_norm`), the array transforms and the
state-dict loops are public: `protjax.hf.electra` maps the same layers.

Kinds: "encoder" is `BertModel` / `AlbertModel` (keys without a prefix, no
pooler: protjax has none); "masked_lm" is `BertForMaskedLM` /
`AlbertForMaskedLM` (keys prefixed `bert.` / `albert.`, plus the MLM head).

Hugging Face key layout (`{i}` = layer; `L` = `encoder.layer.{i}` for BERT):
```
embeddings.{word,position,token_type}_embeddings.weight   [rows, E]
embeddings.LayerNorm.{weight,bias}                        [E]
L.attention.self.{query,key,value}.{weight,bias}          [hidden, hidden], [hidden]
L.attention.output.dense.{weight,bias}                    [hidden, hidden], [hidden]
L.attention.output.LayerNorm.{weight,bias}                [hidden]
L.intermediate.dense.{weight,bias}                        [mlp, hidden], [mlp]
L.output.dense.{weight,bias}                              [hidden, mlp], [hidden]
L.output.LayerNorm.{weight,bias}                          [hidden]
cls.predictions.transform.dense.{weight,bias}             [hidden, hidden], [hidden]
cls.predictions.transform.LayerNorm.{weight,bias}         [hidden]
cls.predictions.bias                                      [vocab]
```
ALBERT: `encoder.embedding_hidden_mapping_in.{weight,bias}` ([hidden, E]) and
one layer `A = encoder.albert_layer_groups.0.albert_layers.0`:
`A.attention.{query,key,value,dense}`, `A.attention.LayerNorm`, `A.ffn`,
`A.ffn_output`, `A.full_layer_layer_norm`; head `predictions.dense`
([E, hidden]), `predictions.LayerNorm`, `predictions.bias`.

The decoder weight and bias (`cls.predictions.decoder.*`,
`predictions.decoder.*`) are tied to the word embeddings and to the output
bias: `save_pretrained` leaves them out, so export writes neither and import
accepts them only when equal. Import ignores what a checkpoint may carry
beyond the MLM model: the pooler, the next-sentence / sentence-order head
(converted TF checkpoints have both) and the `position_ids` /
`token_type_ids` buffers older transformers saved.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from protjax.errors import InputError
# get_path/set_path: protjax.hf.electra uses them from here.
from protjax.hf import get_path, set_path, validated_config  # noqa: F401

MODEL_TYPES = ("bert", "albert")
ENCODER = "encoder"
MASKED_LM = "masked_lm"
KINDS = (ENCODER, MASKED_LM)
ACTIVATIONS = ("gelu", "gelu_new")  # protjax.models.bert.ACTIVATIONS (no jax import here)

_PREFIX = {"bert": "bert.", "albert": "albert."}
_HEAD = {"bert": "cls.predictions.", "albert": "predictions."}
_ARCHITECTURES = {("bert", ENCODER): "BertModel", ("bert", MASKED_LM): "BertForMaskedLM",
                  ("albert", ENCODER): "AlbertModel", ("albert", MASKED_LM): "AlbertForMaskedLM"}
# Tensors a checkpoint may hold that the MLM model does not use (after the prefix is stripped).
_IGNORED = {
    "bert": ("pooler.dense.weight", "pooler.dense.bias", "cls.seq_relationship.weight",
             "cls.seq_relationship.bias", "embeddings.position_ids", "embeddings.token_type_ids"),
    "albert": ("pooler.weight", "pooler.bias", "sop_classifier.classifier.weight",
               "sop_classifier.classifier.bias", "embeddings.position_ids",
               "embeddings.token_type_ids"),
}
# protjax layer sub-path -> (BERT name, ALBERT name) of the same Linear / LayerNorm.
_LAYER_MODULES = {
    ("attention", "query"): ("attention.self.query", "attention.query"),
    ("attention", "key"): ("attention.self.key", "attention.key"),
    ("attention", "value"): ("attention.self.value", "attention.value"),
    ("attention", "out"): ("attention.output.dense", "attention.dense"),
    ("attention_layer_norm",): ("attention.output.LayerNorm", "attention.LayerNorm"),
    ("mlp", "wi"): ("intermediate.dense", "ffn"),
    ("mlp", "wo"): ("output.dense", "ffn_output"),
    ("mlp_layer_norm",): ("output.LayerNorm", "full_layer_layer_norm"),
}


def model_type(config: Any) -> str:
  """"bert" or "albert": the Hugging Face architecture a protjax BertConfig maps to.

  Raises InputError for the mixed shapes protjax can train but transformers
  cannot load (a factorised embedding without sharing, or the reverse).
  """
  factorised = config.embedding_size is not None
  if factorised == bool(config.share_layers):
    return "albert" if factorised else "bert"
  raise InputError(f"no Hugging Face architecture has embedding_size={config.embedding_size} "
                   f"with share_layers={config.share_layers}: BERT has neither, ALBERT both")


def dims(config: Any) -> dict[str, int]:
  """The sizes the mapping needs, read from a protjax `BertConfig` (duck-typed)."""
  hidden = int(config.hidden_size)
  return dict(vocab=int(config.vocab_size), hidden=hidden,
              emb=hidden if config.embedding_size is None else int(config.embedding_size),
              mlp=int(config.intermediate_size), heads=int(config.num_heads),
              kv=hidden // int(config.num_heads), layers=int(config.num_layers),
              positions=int(config.max_position_embeddings),
              types=int(config.type_vocab_size))


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def linear(hf: str, path: tuple[str, ...], n_in: int, n_out: int, heads_out: bool = False,
           heads_in: bool = False):
  """A Linear's weight and bias entries (transforms: see `to_hf_array`)."""
  weight = "linear_in" if heads_out else "linear_out" if heads_in else "transpose"
  yield f"{hf}.weight", path + ("kernel",), weight, (n_out, n_in)
  yield f"{hf}.bias", path + ("bias",), "bias_heads" if heads_out else "copy", (n_out,)


def layer_norm(hf: str, path: tuple[str, ...], n: int):
  """A LayerNorm's weight and bias entries."""
  yield f"{hf}.weight", path + ("scale",), "copy", (n,)
  yield f"{hf}.bias", path + ("bias",), "copy", (n,)


def embedding_entries(prefix: str, d: Mapping[str, int]):
  """The three tables and their LayerNorm (`{prefix}embeddings.*`, protjax `embeddings/`)."""
  emb = ("embeddings",)
  for hf, name, rows in (("word", "word_embeddings", d["vocab"]),
                         ("position", "position_embeddings", d["positions"]),
                         ("token_type", "token_type_embeddings", d["types"])):
    yield f"{prefix}embeddings.{hf}_embeddings.weight", emb + (name, "embedding"), "copy", (
        rows, d["emb"])
  yield from layer_norm(f"{prefix}embeddings.LayerNorm", emb + ("layer_norm",), d["emb"])


def layer_entries(hf_layer: str, layer: tuple[str, ...], h: int, m: int, albert: bool = False):
  """One post-LayerNorm layer (BERT's module names, or ALBERT's shared layer's).

  Args:
    hf_layer: its HF prefix, e.g. `bert.encoder.layer.3`.
    layer: its protjax path, e.g. `("encoder", "layers_3")`.
    h, m: hidden and intermediate sizes.
  """
  for sub, names in _LAYER_MODULES.items():
    hf = f"{hf_layer}.{names[albert]}"
    if sub[-1].endswith("layer_norm"):
      yield from layer_norm(hf, layer + sub, h)
    elif sub[0] == "attention":
      yield from linear(hf, layer + sub, h, h, heads_out=sub[1] != "out",
                        heads_in=sub[1] == "out")
    else:
      yield from linear(hf, layer + sub, *((h, m) if sub[1] == "wi" else (m, h)))


def _entries(config: Any, kind: str) -> Iterator[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
  """Every tensor: (HF key as `save_pretrained` writes it, protjax path, transform, HF shape)."""
  _check_kind(kind)
  family, d = model_type(config), dims(config)
  albert = family == "albert"
  prefix = _PREFIX[family] if kind == MASKED_LM else ""
  yield from embedding_entries(prefix, d)
  if albert:
    yield from linear(f"{prefix}encoder.embedding_hidden_mapping_in",
                      ("embeddings", "projection"), d["emb"], d["hidden"])
    layers = [(f"{prefix}encoder.albert_layer_groups.0.albert_layers.0",
               ("encoder", "shared_layer"))]
  else:
    layers = [(f"{prefix}encoder.layer.{i}", ("encoder", f"layers_{i}"))
              for i in range(d["layers"])]
  for hf_layer, layer in layers:
    yield from layer_entries(hf_layer, layer, d["hidden"], d["mlp"], albert)
  if kind == MASKED_LM:
    head = _HEAD[family]
    transform = head if albert else f"{head}transform."
    yield from linear(f"{transform}dense", ("mlm_head", "dense"), d["hidden"], d["emb"])
    yield from layer_norm(f"{transform}LayerNorm", ("mlm_head", "layer_norm"), d["emb"])
    yield f"{head}bias", ("mlm_head", "output_bias"), "copy", (d["vocab"],)


def expected_hf_shapes(config: Any, kind: str = ENCODER) -> dict[str, tuple[int, ...]]:
  """HF key -> shape of every tensor a `kind` model of `config` saves (tied ones excluded)."""
  return {key: shape for key, _, _, shape in _entries(config, kind)}


def to_hf_array(x: np.ndarray, transform: str, d: dict[str, int]) -> np.ndarray:
  inner = d["heads"] * d["kv"]
  if transform == "copy":
    return x
  if transform == "transpose":
    return x.T
  if transform == "linear_in":  # [embed, heads, kv] -> [heads*kv, embed]
    return x.reshape(x.shape[0], inner).T
  if transform == "linear_out":  # [heads, kv, embed] -> [embed, heads*kv]
    return x.reshape(inner, x.shape[-1]).T
  if transform == "bias_heads":  # [heads, kv] -> [heads*kv]
    return x.reshape(inner)
  if transform == "row":  # a one-output Linear's kernel [in] -> weight [1, in]
    return x[None]
  if transform == "scalar":  # and its bias [] -> [1]
    return x.reshape(1)
  if transform == "heads_in_last":  # XLNet's `o`: [heads, kv, embed] -> [embed, heads, kv]
    return x.transpose(2, 0, 1)
  if transform == "vector_3d":  # XLNet's `mask_emb`: [embed] -> [1, 1, embed]
    return x[None, None]
  raise AssertionError(transform)


def from_hf_array(x: np.ndarray, transform: str, d: dict[str, int]) -> np.ndarray:
  if transform == "copy":
    return x
  if transform == "transpose":
    return x.T
  if transform == "linear_in":  # [heads*kv, embed] -> [embed, heads, kv]
    return x.T.reshape(x.shape[1], d["heads"], d["kv"])
  if transform == "linear_out":  # [embed, heads*kv] -> [heads, kv, embed]
    return x.T.reshape(d["heads"], d["kv"], x.shape[0])
  if transform == "bias_heads":  # [heads*kv] -> [heads, kv]
    return x.reshape(d["heads"], d["kv"])
  if transform == "row":
    return x[0]
  if transform == "scalar":
    return x.reshape(())
  if transform == "heads_in_last":
    return x.transpose(1, 2, 0)
  if transform == "vector_3d":
    return x[0, 0]
  raise AssertionError(transform)


def params_kind(params: Mapping[str, Any]) -> str:
  """"masked_lm" when the tree has the MLM head, else "encoder"."""
  return MASKED_LM if "mlm_head" in params else ENCODER


def to_hf_state_dict(params: Mapping[str, Any], config: Any, *, kind: Optional[str] = None,
                     dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """protjax params -> Hugging Face state dict (contiguous numpy arrays of `dtype`).

  Args:
    params: the protjax tree (`variables['params']`), arrays `np.asarray` accepts.
    config: protjax `BertConfig` (BERT- or ALBERT-shaped; only sizes are read).
    kind: "encoder": `BertModel` / `AlbertModel` keys, no prefix (an MLM
      head in `params` is dropped); "masked_lm": `*ForMaskedLM` keys, with the
      head. Default: what `params` holds.
    dtype: dtype of the written tensors.
  Returns:
    `{hf_key: array}` exactly as `save_pretrained` writes it (no tied decoder).
  """
  kind = kind or params_kind(params)
  return state_from_entries(params, _entries(config, kind), dims(config), dtype)


def state_from_entries(params: Mapping[str, Any], entries, d: Mapping[str, int],
                       dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """`{hf_key: array}` of `entries` ((key, path, transform, shape), as `_entries`
  yields them) read from `params`; ValueError naming a missing or misshapen one."""
  out = {}
  for key, path, transform, shape in entries:
    try:
      x = np.asarray(get_path(params, path))
    except KeyError as e:
      raise ValueError(f"params have no {e.args[0]} (needed for {key})") from None
    y = to_hf_array(x, transform, d)
    if y.shape != shape:
      raise ValueError(f"params {'/'.join(path)} has shape {x.shape}, which does not give "
                       f"{key} {shape}")
    out[key] = np.ascontiguousarray(y.astype(dtype, copy=False))
  return out


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str,
                 path: Optional[str]) -> dict[str, np.ndarray]:
  """Keys of either layout -> the bare-model names (`prefix`, e.g. `bert.`, removed)."""
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    bare = key[len(prefix):] if key.startswith(prefix) else key
    if bare in out:
      raise InputError(f"tensor {bare!r} appears both with and without the {prefix!r} prefix",
                       path=path)
    out[bare] = value
  return out


def check_tied(state: Mapping[str, np.ndarray], ties: Mapping[str, tuple[str, tuple[str, ...]]],
               params: Mapping[str, Any], path: Optional[str], who: str) -> set:
  """Checks tied aliases (`alias -> (the key it ties to, its protjax path)`) that
  `state` carries against `params`; returns the aliases used. An alias that
  differs is an InputError: `who` (the families) require the tie."""
  used = set()
  for alias, (target, ppath) in ties.items():
    if alias not in state:
      continue
    tied_to = get_path(params, ppath)
    if np.shape(state[alias]) != tied_to.shape or not np.array_equal(
        np.asarray(state[alias], np.float32), tied_to):
      raise InputError(f"tensor {alias!r} differs from {target!r}: the MLM decoder is not tied, "
                       f"which {who} require", path=path)
    used.add(alias)
  return used


def _tied(state: dict, family: str, params: Mapping[str, Any], path: Optional[str]) -> set:
  """Checks the tied decoder aliases against what they tie to; returns the keys used."""
  head = _HEAD[family]
  ties = {f"{head}decoder.weight": ("embeddings.word_embeddings.weight",
                                    ("embeddings", "word_embeddings", "embedding")),
          f"{head}decoder.bias": (f"{head}bias", ("mlm_head", "output_bias"))}
  return check_tied(state, ties, params, path, "ProtBert / ProtAlbert")


def from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: Any,
                       kind: Optional[str] = None, *, path: Optional[str] = None
                       ) -> dict[str, Any]:
  """Hugging Face BERT / ALBERT state dict -> protjax params (float32 numpy), validated.

  Accepts the bare-model layout (`BertModel`, `AlbertModel`) and the
  `*ForMaskedLM` one (`bert.` / `albert.` prefix + MLM head).

  Args:
    state_dict: `{hf_key: array}` as `safetensors.numpy.load_file` gives it.
    config: protjax `BertConfig` the tensors must fit.
    kind: "encoder" (head tensors, if any, are ignored), "masked_lm" (the head
      must be there), or None: the head when the tensors have it.
    path: the file the tensors came from, for error messages.
  Returns:
    `embeddings` + `encoder` (+ `mlm_head`) subtrees.
  Raises:
    InputError naming the key: a missing tensor, a wrong shape or dtype, a
    tied decoder tensor that differs from what it ties to, or an unexpected
    tensor (which this architecture would silently drop).
  """
  family, d = model_type(config), dims(config)
  state = strip_prefix(state_dict, _PREFIX[family], path)
  head = _HEAD[family]
  has_head = any(k.startswith(head) and not k.startswith(f"{head}decoder.") for k in state)
  if kind is None:
    kind = MASKED_LM if has_head else ENCODER
  _check_kind(kind)
  if f"{head}bias" not in state and f"{head}decoder.bias" in state:
    state[f"{head}bias"] = state[f"{head}decoder.bias"]  # saves that kept only the alias
  prefix = _PREFIX[family] if kind == MASKED_LM else ""
  params, used = params_from_entries(state, _entries(config, kind), d, prefix=prefix, path=path)
  used |= set(_IGNORED[family])
  if kind == MASKED_LM:
    used |= _tied(state, family, params, path)
  for key in sorted(state):
    if key in used or (kind == ENCODER and key.startswith(head)):
      continue
    raise InputError(f"unexpected tensor {key!r}: not part of a {family.upper()} "
                     f"{'masked-LM' if kind == MASKED_LM else 'encoder'} model of this config",
                     path=path)
  return params


def params_from_entries(state: Mapping[str, np.ndarray], entries, d: Mapping[str, int], *,
                        prefix: str = "", path: Optional[str] = None
                        ) -> tuple[dict[str, Any], set[str]]:
  """protjax params (float32) from the tensors `entries` name, and the keys used.

  `state` has its keys without `prefix` (which the entries' keys may carry).
  Raises InputError naming the key: a missing tensor, a wrong shape, a
  non-float dtype.
  """
  params: dict[str, Any] = {}
  used = set()
  for key, ppath, transform, shape in entries:
    key = key[len(prefix):] if prefix and key.startswith(prefix) else key
    if key not in state:
      raise InputError(f"missing tensor {key!r} (expected shape {list(shape)})", path=path)
    x = np.asarray(state[key])
    if tuple(x.shape) != shape:
      raise InputError(f"tensor {key!r} has shape {list(x.shape)}, expected {list(shape)} "
                       "from config.json", path=path)
    if not np.issubdtype(x.dtype, np.floating):
      raise InputError(f"tensor {key!r} has dtype {x.dtype}, expected a float type", path=path)
    # asarray(order="C"), not ascontiguousarray, which makes a 0-d array 1-d.
    set_path(params, ppath, np.asarray(from_hf_array(x.astype(np.float32), transform, d),
                                       order="C"))
    used.add(key)
  return params, used


# --- config.json ------------------------------------------------------------

def hf_config(config: Any, kind: str = ENCODER, dtype: str = "float32") -> dict[str, Any]:
  """The Hugging Face `BertConfig` / `AlbertConfig` dict (config.json) of a protjax config.

  Written as transformers 5 writes it, plus `torch_dtype` so transformers 4
  reads the dtype too.
  """
  _check_kind(kind)
  family = model_type(config)
  common = {
      "architectures": [_ARCHITECTURES[(family, kind)]],
      "attention_probs_dropout_prob": float(config.dropout_rate),
      "dtype": dtype,
      "hidden_act": config.hidden_act,
      "hidden_dropout_prob": float(config.dropout_rate),
      "hidden_size": int(config.hidden_size),
      "initializer_range": float(config.initializer_range),
      "intermediate_size": int(config.intermediate_size),
      "layer_norm_eps": float(config.layer_norm_epsilon),
      "max_position_embeddings": int(config.max_position_embeddings),
      "model_type": family,
      "num_attention_heads": int(config.num_heads),
      "num_hidden_layers": int(config.num_layers),
      "pad_token_id": 0,
      "tie_word_embeddings": True,
      "torch_dtype": dtype,
      "type_vocab_size": int(config.type_vocab_size),
      "vocab_size": int(config.vocab_size),
  }
  if family == "bert":
    common.update(add_cross_attention=False, bos_token_id=None, classifier_dropout=None,
                  eos_token_id=None, is_decoder=False, use_cache=True)
  else:
    # ALBERT's ids for [CLS] / [SEP] (2 / 3) are ProtBert's too.
    common.update(bos_token_id=2, classifier_dropout_prob=0.1,
                  embedding_size=int(config.embedding_size), eos_token_id=3, inner_group_num=1,
                  num_hidden_groups=1)
  return dict(sorted(common.items()))


def require(hf: Mapping[str, Any], key: str, want: Any, default: Any, path: Optional[str],
             why: str) -> None:
  value = hf.get(key, default)
  if value != want:
    raise InputError(f"config key {key!r} is {value!r}, protjax needs {want!r} ({why})",
                     path=path)


def hf_model_type(hf: Mapping[str, Any], *, path: Optional[str] = None) -> str:
  """"bert" or "albert": config.json's `model_type`, else told by its `architectures`.

  The released Rostlab/prot_bert config.json predates `model_type` (transformers
  2); transformers itself then goes by the repository name, which an import
  from a local directory does not have.
  """
  family = hf.get("model_type")
  if family is None:
    names = {a.split("For")[0].replace("Model", "").lower() for a in hf.get("architectures") or []}
    if len(names) == 1 and names <= set(MODEL_TYPES):
      return names.pop()
    raise InputError("config key 'model_type' is missing and 'architectures' "
                     f"({hf.get('architectures')!r}) names no BERT or ALBERT model", path=path)
  if family not in MODEL_TYPES:
    raise InputError(f"config key 'model_type' is {family!r}, expected one of {MODEL_TYPES}",
                     path=path)
  return family


def hf_size(hf: Mapping[str, Any], key: str, default: Any = None, *,
            path: Optional[str] = None) -> int:
  """config.json's positive integer `key`; InputError naming it otherwise."""
  value = hf.get(key, default)
  if value is None:
    raise InputError(f"config key {key!r} is missing", path=path)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise InputError(f"config key {key!r} must be a positive integer, got {value!r}", path=path)
  return value


def hf_number(hf: Mapping[str, Any], key: str, default: float, *,
              path: Optional[str] = None) -> float:
  """config.json's non-negative number `key`; InputError naming it otherwise."""
  value = hf.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
    raise InputError(f"config key {key!r} must be a non-negative number, got {value!r}",
                     path=path)
  return float(value)


def encoder_fields_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None,
                           act: str = "gelu", dropout: float = 0.1) -> dict[str, Any]:
  """The fields every BERT-shaped protjax config has (BERT, ALBERT, ELECTRA), validated.

  `act` and `dropout` are the architecture's defaults for an absent
  `hidden_act` / `hidden_dropout_prob`.
  """
  require(hf, "position_embedding_type", "absolute", "absolute", path,
          "learned absolute positions")
  require(hf, "is_decoder", False, False, path, "a bidirectional encoder")
  require(hf, "add_cross_attention", False, False, path, "no cross-attention")
  require(hf, "tie_word_embeddings", True, True, path, "the MLM decoder is the word embedding")
  act = hf.get("hidden_act", act)
  if act not in ACTIVATIONS:
    raise InputError(f"config key 'hidden_act' is {act!r}, protjax supports {ACTIVATIONS}",
                     path=path)
  size = lambda key, default=None: hf_size(hf, key, default, path=path)
  hidden, heads = size("hidden_size"), size("num_attention_heads")
  if hidden % heads:
    raise InputError(f"config key 'num_attention_heads' ({heads}) does not divide "
                     f"'hidden_size' ({hidden})", path=path)
  return dict(
      vocab_size=size("vocab_size"),
      hidden_size=hidden,
      num_layers=size("num_hidden_layers"),
      num_heads=heads,
      intermediate_size=size("intermediate_size"),
      max_position_embeddings=size("max_position_embeddings"),
      type_vocab_size=size("type_vocab_size", 2),
      hidden_act=act,
      layer_norm_epsilon=hf_number(hf, "layer_norm_eps", 1e-12, path=path),
      dropout_rate=hf_number(hf, "hidden_dropout_prob", dropout, path=path),
      initializer_range=hf_number(hf, "initializer_range", 0.02, path=path),
  )


def config_fields_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None
                          ) -> dict[str, Any]:
  """Validated protjax `BertConfig` fields from a Hugging Face config.json dict.

  Raises:
    InputError naming the offending key: a model type other than bert/albert,
    a missing or non-positive size, an unsupported activation, relative
    position embeddings, a decoder, an untied MLM decoder, or ALBERT layer
    groups other than one shared layer.
  """
  albert = hf_model_type(hf, path=path) == "albert"
  if albert:
    require(hf, "num_hidden_groups", 1, 1, path, "one shared layer")
    require(hf, "inner_group_num", 1, 1, path, "one shared layer")
  fields = encoder_fields_from_hf(hf, path=path, act="gelu_new" if albert else "gelu",
                                  dropout=0.0 if albert else 0.1)
  return dict(fields, embedding_size=hf_size(hf, "embedding_size", path=path) if albert else None,
              share_layers=albert)


def config_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None):
  """The protjax `BertConfig` of a Hugging Face BERT / ALBERT config.json dict (validated)."""
  from protjax.models.bert import BertConfig  # deferred: the model pulls in jax/flax
  return validated_config(BertConfig, config_fields_from_hf(hf, path=path), path=path)


def family_of(hf: Mapping[str, Any]) -> str:
  """"protalbert" for an ALBERT config.json, "protbert" for a BERT one."""
  return "protalbert" if hf_model_type(hf) == "albert" else "protbert"


def kind_of(hf: Mapping[str, Any], state_keys, *, path: Optional[str] = None) -> str:
  """"masked_lm" for a *ForMaskedLM / *ForPreTraining directory, "encoder" for Bert/AlbertModel."""
  family = hf_model_type(hf, path=path)
  architectures = hf.get("architectures") or []
  name = "Albert" if family == "albert" else "Bert"
  if any(a in (f"{name}ForMaskedLM", f"{name}ForPreTraining") for a in architectures):
    return MASKED_LM
  if f"{name}Model" in architectures:
    return ENCODER
  if architectures:
    raise InputError(f"config key 'architectures' is {architectures!r}; expected "
                     f"{name}ForMaskedLM or {name}Model", path=path)
  # No architectures recorded: tell by the tensors.
  head = _HEAD[family]
  return MASKED_LM if any(k.startswith(head) for k in state_keys) else ENCODER


# --- tokenizer ---------------------------------------------------------------
def _tokenizer_json(vocabulary) -> str:
  """tokenizer.json giving exactly `vocabulary`'s ids for space-separated residues.

  A WordLevel model over the token list behind a whitespace split (each
  residue of "M K T" is one token), the framing tokens added by the template
  post-processor (`[CLS] $A [SEP]`), as the released ProtBert tokenizer does.
  Like it, it expects upper-case residues with U Z O B mapped to X first.
  """
  from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
  tokens = vocabulary.tokens()
  names = vocabulary.to_dict()
  tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)},
                                         unk_token=names["unk_token"]))
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  specials = [t for t in tokens if not (len(t) == 1 and "A" <= t <= "Z")]
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in specials])
  framed = lambda seq: " ".join(names["prefix"] + [seq] + names["suffix"])
  tokenizer.post_processor = processors.TemplateProcessing(
      single=framed("$A"), pair=framed("$A") + " " + " ".join(["$B:1"] + [
          f"{t}:1" for t in names["suffix"]]),
      special_tokens=[(t, vocabulary.token_id(t))
                      for t in dict.fromkeys(names["prefix"] + names["suffix"])])
  return tokenizer.to_str(pretty=True)


def write_tokenizer(directory: str, vocabulary) -> None:
  """vocab.txt (BERT's WordPiece vocabulary, one token a line), tokenizer.json,
  tokenizer_config.json and special_tokens_map.json, giving exactly
  `vocabulary`'s ids with `BertTokenizer`, `AutoTokenizer` and
  `PreTrainedTokenizerFast` (ALBERT exports too: the token list is not a
  SentencePiece model)."""
  import json  # pylint: disable=import-outside-toplevel
  names = vocabulary.to_dict()
  with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("".join(t + "\n" for t in vocabulary.tokens()))
  with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(_tokenizer_json(vocabulary))
  specials = {"unk_token": names["unk_token"], "pad_token": names["pad_token"]}
  if names["prefix"]:
    specials["cls_token"] = names["prefix"][0]
  if names["suffix"]:
    specials["sep_token"] = names["suffix"][0]
  if "[MASK]" in vocabulary.tokens():
    specials["mask_token"] = "[MASK]"
  config = dict(specials, tokenizer_class="BertTokenizer", do_lower_case=False,
                tokenize_chinese_chars=False, strip_accents=None,
                model_max_length=1_000_000_000, clean_up_tokenization_spaces=False)
  for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
