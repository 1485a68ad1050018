"""ProtElectra parameters <-> Hugging Face ELECTRA state dicts and config.json (numpy only).

One export holds one of the two models the training tree holds
(`protjax.models.electra`), each in its Hugging Face class:

  "encoder"        `ElectraModel`: the discriminator's encoder (what the paper
                   embedded, what protjax-embed runs); keys without a prefix
  "discriminator"  `ElectraForPreTraining`: the same under `electra.`, plus
                   `discriminator_predictions.{dense,dense_prediction}`
  "generator"      `ElectraForMaskedLM`: the generator under `electra.` (its
                   tables are the shared ones), plus `generator_predictions.
                   {dense,LayerNorm}` and `generator_lm_head.bias`

Layers are BERT's, under BERT's names (`protjax.hf.bert`, whose entry
builders and transforms this module uses): `{p}embeddings.*`,
`{p}embeddings_project` (when E differs from the model's hidden size),
`{p}encoder.layer.{i}.*`. The generator's decoder weight
(`generator_lm_head.weight`) is tied to the word embeddings:
`save_pretrained` leaves it out, so export writes none and import accepts it
only when equal. Import ignores the `position_ids` / `token_type_ids`
buffers older transformers saved.

config.json is transformers' `ElectraConfig` of the model the directory
holds, plus `protjax_electra`: both models' sizes and the discriminator
loss's weight, so an import rebuilds the whole `ElectraConfig`. A directory
without it (the released Rostlab models) gets the other model by Table 2's
rule: the generator has a quarter of the discriminator's hidden size,
intermediate size and heads, and the same depth.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import numpy as np

from protjax.errors import InputError
from protjax.hf import bert as hf_bert
from protjax.hf import validated_config

MODEL_TYPES = ("electra",)
ENCODER, DISCRIMINATOR, GENERATOR = "encoder", "discriminator", "generator"
KINDS = (ENCODER, DISCRIMINATOR, GENERATOR)
PREFIX = "electra."
PROTJAX_KEY = "protjax_electra"
_ARCHITECTURES = {ENCODER: "ElectraModel", DISCRIMINATOR: "ElectraForPreTraining",
                  GENERATOR: "ElectraForMaskedLM"}
_DISCRIMINATOR_HEAD = "discriminator_predictions."
_GENERATOR_HEADS = ("generator_predictions.", "generator_lm_head.")
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids")
_TIED = {"generator_lm_head.weight": ("embeddings.word_embeddings.weight",
                                     ("embeddings", "word_embeddings", "embedding"))}
# config.json size keys <-> ElectraConfig fields, discriminator and generator.
_SIZES = {"hidden_size": ("hidden_size", "generator_hidden_size"),
          "intermediate_size": ("intermediate_size", "generator_intermediate_size"),
          "num_attention_heads": ("num_heads", "generator_num_heads"),
          "num_hidden_layers": ("num_layers", "generator_num_layers")}


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _model(config: Any, kind: str):
  """The `BertConfig` of the model a `kind` export holds."""
  return config.generator if kind == GENERATOR else config.discriminator


def _entries(config: Any, kind: str) -> Iterator[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
  """Every tensor: (HF key as `save_pretrained` writes it, protjax path, transform, HF shape)."""
  _check_kind(kind)
  model = _model(config, kind)
  d = hf_bert.dims(model)
  prefix = "" if kind == ENCODER else PREFIX
  root = ("generator",) if kind == GENERATOR else ()
  yield from hf_bert.embedding_entries(prefix, d)
  if model.embedding_size is not None:
    yield from hf_bert.linear(f"{prefix}embeddings_project", root + ("embeddings_project",),
                              d["emb"], d["hidden"])
  for i in range(d["layers"]):
    yield from hf_bert.layer_entries(f"{prefix}encoder.layer.{i}",
                                     root + ("encoder", f"layers_{i}"), d["hidden"], d["mlp"])
  h = d["hidden"]
  if kind == DISCRIMINATOR:
    head = ("discriminator_head",)
    yield from hf_bert.linear(f"{_DISCRIMINATOR_HEAD}dense", head + ("dense",), h, h)
    yield (f"{_DISCRIMINATOR_HEAD}dense_prediction.weight",
           head + ("dense_prediction", "kernel"), "row", (1, h))
    yield (f"{_DISCRIMINATOR_HEAD}dense_prediction.bias",
           head + ("dense_prediction", "bias"), "scalar", (1,))
  elif kind == GENERATOR:
    head = root + ("mlm_head",)
    yield from hf_bert.linear("generator_predictions.dense", head + ("dense",), h, d["emb"])
    yield from hf_bert.layer_norm("generator_predictions.LayerNorm", head + ("layer_norm",),
                                  d["emb"])
    yield "generator_lm_head.bias", head + ("output_bias",), "copy", (d["vocab"],)


def expected_hf_shapes(config: Any, kind: str = ENCODER) -> dict[str, tuple[int, ...]]:
  """HF key -> shape of every tensor a `kind` model of `config` saves (the tied one excluded)."""
  return {key: shape for key, _, _, shape in _entries(config, kind)}


def params_kind(params: Mapping[str, Any]) -> str:
  """What a protjax tree of one model holds ("generator" / "discriminator" / "encoder")."""
  if "generator" in params and "encoder" not in params:
    return GENERATOR
  return DISCRIMINATOR if "discriminator_head" in params else ENCODER


def to_hf_state_dict(params: Mapping[str, Any], config: Any, *, kind: Optional[str] = None,
                     dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """protjax params -> Hugging Face state dict (contiguous numpy arrays of `dtype`).

  Args:
    params: a tree holding the `kind` model's subtrees (the training tree holds all).
    config: protjax `ElectraConfig`.
    kind: "encoder", "discriminator" or "generator" (default: what `params` holds).
    dtype: dtype of the written tensors.
  Returns:
    `{hf_key: array}` exactly as `save_pretrained` writes it (no tied decoder).
  """
  kind = kind or params_kind(params)
  return hf_bert.state_from_entries(params, _entries(config, kind),
                                    hf_bert.dims(_model(config, kind)), dtype)


def _stored_kind(state: Mapping[str, np.ndarray]) -> str:
  """The model a (prefix-stripped) state dict holds, by its head tensors."""
  if any(k.startswith(_GENERATOR_HEADS) for k in state):
    return GENERATOR
  return DISCRIMINATOR if any(k.startswith(_DISCRIMINATOR_HEAD) for k in state) else ENCODER


def from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: Any,
                       kind: Optional[str] = None, *, path: Optional[str] = None
                       ) -> dict[str, Any]:
  """Hugging Face ELECTRA state dict -> protjax params (float32 numpy), validated.

  Accepts `ElectraModel`'s keys and the `electra.`-prefixed ones of
  `ElectraForPreTraining` and `ElectraForMaskedLM`.

  Args:
    state_dict: `{hf_key: array}` as `safetensors.numpy.load_file` gives it.
    config: protjax `ElectraConfig` the tensors must fit.
    kind: "encoder" (a discriminator's head, if any, is ignored),
      "discriminator", "generator", or None: what the tensors hold.
    path: the file the tensors came from, for error messages.
  Returns:
    The subtrees of `kind` (`protjax.models.electra.kind_params`).
  Raises:
    InputError naming the key: a missing tensor, a wrong shape or dtype, an
    untied decoder, an unexpected tensor; or the other model than asked for.
  """
  state = hf_bert.strip_prefix(state_dict, PREFIX, path)
  stored = _stored_kind(state)
  kind = stored if kind is None else kind
  _check_kind(kind)
  if stored == GENERATOR and kind != GENERATOR:
    raise InputError(f"the tensors are ELECTRA's generator (ElectraForMaskedLM), not the "
                     f"{kind}: protjax embeds the discriminator (ElectraModel / "
                     "ElectraForPreTraining, e.g. prot_electra_discriminator_bfd)", path=path)
  if kind == GENERATOR and stored != GENERATOR:
    raise InputError("the tensors are ELECTRA's discriminator, not the generator "
                     "(no generator_predictions / generator_lm_head)", path=path)
  d = hf_bert.dims(_model(config, kind))
  params, used = hf_bert.params_from_entries(state, _entries(config, kind), d, prefix=PREFIX,
                                             path=path)
  used |= set(_IGNORED)
  if kind == GENERATOR:
    used |= hf_bert.check_tied(state, _TIED, params, path, "ProtElectra's generator")
  for key in sorted(state):
    if key in used or (kind == ENCODER and key.startswith(_DISCRIMINATOR_HEAD)):
      continue
    raise InputError(f"unexpected tensor {key!r}: not part of an ELECTRA {kind} of this config",
                     path=path)
  return params


# --- config.json ------------------------------------------------------------

def _hf_sizes(model) -> dict[str, int]:
  """A `BertConfig`'s sizes under config.json's names."""
  return {"hidden_size": int(model.hidden_size), "intermediate_size": int(model.intermediate_size),
          "num_attention_heads": int(model.num_heads), "num_hidden_layers": int(model.num_layers)}


def hf_config(config: Any, kind: str = ENCODER, dtype: str = "float32") -> dict[str, Any]:
  """The Hugging Face `ElectraConfig` dict (config.json) of the `kind` model, as
  transformers 5 writes it, plus `torch_dtype` (transformers 4 reads the dtype
  from it) and `protjax_electra` (both models' sizes, the loss weight)."""
  _check_kind(kind)
  model = _model(config, kind)
  fields = {
      "add_cross_attention": False,
      "architectures": [_ARCHITECTURES[kind]],
      "attention_probs_dropout_prob": float(config.dropout_rate),
      "bos_token_id": None,
      "classifier_dropout": None,
      "dtype": dtype,
      "embedding_size": int(config.embedding_size),
      "eos_token_id": None,
      "hidden_act": config.hidden_act,
      "hidden_dropout_prob": float(config.dropout_rate),
      "initializer_range": float(config.initializer_range),
      "is_decoder": False,
      "layer_norm_eps": float(config.layer_norm_epsilon),
      "max_position_embeddings": int(config.max_position_embeddings),
      "model_type": "electra",
      "pad_token_id": 0,
      PROTJAX_KEY: {"discriminator": _hf_sizes(config.discriminator),
                    "discriminator_weight": float(config.discriminator_weight),
                    "generator": _hf_sizes(config.generator)},
      "summary_activation": "gelu",
      "summary_last_dropout": 0.1,
      "summary_type": "first",
      "summary_use_proj": True,
      "tie_word_embeddings": True,
      "torch_dtype": dtype,
      "type_vocab_size": int(config.type_vocab_size),
      "use_cache": True,
      "vocab_size": int(config.vocab_size),
  }
  fields.update(_hf_sizes(model))
  return dict(sorted(fields.items()))


def _architecture_kind(hf: Mapping[str, Any], *, path: Optional[str] = None) -> Optional[str]:
  """The kind config.json's `architectures` names, None when it names none."""
  architectures = hf.get("architectures") or []
  for kind, name in _ARCHITECTURES.items():
    if name in architectures:
      return kind
  if architectures:
    raise InputError(f"config key 'architectures' is {architectures!r}; expected one of "
                     f"{sorted(_ARCHITECTURES.values())}", path=path)
  return None


def _other_sizes(sizes: Mapping[str, int], generator: bool) -> dict[str, int]:
  """The other model by Table 2's rule: generator = a quarter of the
  discriminator's hidden size, intermediate size and heads, same depth."""
  if generator:  # this directory holds the generator: the discriminator is 4x
    return {k: v if k == "num_hidden_layers" else 4 * v for k, v in sizes.items()}
  hidden = max(1, sizes["hidden_size"] // 4)
  heads = max(1, sizes["num_attention_heads"] // 4)
  while hidden % heads:
    heads -= 1
  return {"hidden_size": hidden, "intermediate_size": max(1, sizes["intermediate_size"] // 4),
          "num_attention_heads": heads, "num_hidden_layers": sizes["num_hidden_layers"]}


def _protjax_sizes(hf: Mapping[str, Any], held: str, sizes: Mapping[str, int],
                   path: Optional[str]) -> tuple[dict[str, dict[str, int]], float]:
  """Both models' sizes and the loss weight: `protjax_electra`'s, checked
  against the sizes config.json gives the model it holds, or Table 2's rule."""
  extra = hf.get(PROTJAX_KEY)
  generator = held == GENERATOR
  if extra is None:
    other = _other_sizes(sizes, generator)
    both = {GENERATOR: dict(sizes), DISCRIMINATOR: other} if generator else {
        DISCRIMINATOR: dict(sizes), GENERATOR: other}
    return both, 50.0
  key = lambda *names: ".".join((PROTJAX_KEY,) + names)
  if not isinstance(extra, Mapping):
    raise InputError(f"config key {PROTJAX_KEY!r} must be an object", path=path)
  both = {}
  for model in (DISCRIMINATOR, GENERATOR):
    given = extra.get(model)
    if not isinstance(given, Mapping):
      raise InputError(f"config key {key(model)!r} must be an object of sizes", path=path)
    both[model] = {}
    for name in _SIZES:
      value = given.get(name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"config key {key(model, name)!r} must be a positive integer, got "
                         f"{value!r}", path=path)
      both[model][name] = value
  held_model = GENERATOR if generator else DISCRIMINATOR
  for name, value in sizes.items():
    if both[held_model][name] != value:
      raise InputError(f"config key {key(held_model, name)!r} is {both[held_model][name]}, but "
                       f"{name!r} is {value}", path=path)
  weight = extra.get("discriminator_weight", 50.0)
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
    raise InputError(f"config key {key('discriminator_weight')!r} must be a positive number, "
                     f"got {weight!r}", path=path)
  return both, float(weight)


def config_fields_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None
                          ) -> dict[str, Any]:
  """Validated protjax `ElectraConfig` fields from a Hugging Face config.json dict.

  The sizes config.json gives are the model its `architectures` names (the
  discriminator's when it names none); the other model's come from
  `protjax_electra` or Table 2's rule.
  """
  if hf.get("model_type", "electra") not in MODEL_TYPES:
    raise InputError(f"config key 'model_type' is {hf.get('model_type')!r}, expected 'electra'",
                     path=path)
  held = _architecture_kind(hf, path=path) or DISCRIMINATOR
  fields = hf_bert.encoder_fields_from_hf(hf, path=path, act="gelu", dropout=0.1)
  sizes = {name: hf_bert.hf_size(hf, name, path=path) for name in _SIZES}
  both, weight = _protjax_sizes(hf, held, sizes, path)
  for name, (discriminator, generator) in _SIZES.items():
    fields[discriminator] = both[DISCRIMINATOR][name]
    fields[generator] = both[GENERATOR][name]
  # transformers' ElectraConfig default for an absent embedding_size is 128.
  fields["embedding_size"] = hf_bert.hf_size(hf, "embedding_size", 128, path=path)
  fields["discriminator_weight"] = weight
  return fields


def config_from_hf(hf: Mapping[str, Any], *, path: Optional[str] = None):
  """The protjax `ElectraConfig` of a Hugging Face ELECTRA config.json dict (validated)."""
  from protjax.models.electra import ElectraConfig  # deferred: the model pulls in jax/flax
  return validated_config(ElectraConfig, config_fields_from_hf(hf, path=path), path=path)


def family_of(hf: Mapping[str, Any]) -> str:
  """"protelectra": every ELECTRA config.json."""
  del hf
  return "protelectra"


def kind_of(hf: Mapping[str, Any], state_keys, *, path: Optional[str] = None) -> str:
  """The kind a directory holds: by `architectures`, else by its tensors."""
  kind = _architecture_kind(hf, path=path)
  if kind is not None:
    return kind
  return _stored_kind({k[len(PREFIX):] if k.startswith(PREFIX) else k: None for k in state_keys})


# --- tokenizer ---------------------------------------------------------------
def write_tokenizer(directory: str, vocabulary) -> None:
  """ProtBert's tokenizer files (`protjax.hf.bert.write_tokenizer`): ProtElectra
  shares its vocabulary, and `ElectraTokenizer` is BERT's WordPiece."""
  hf_bert.write_tokenizer(directory, vocabulary)
