"""Hugging Face interop: one small weight-mapping module per family, one interface.

Each family's module (`protjax.hf.t5`, `protjax.hf.bert`, `protjax.hf.electra`,
named by `registry.Family.hf_module`) is pure numpy (no torch, no jax) and provides:

  MODEL_TYPES                       config.json `model_type`s it reads
  family_of(hf) -> str              the protjax family of a config.json dict
  config_from_hf(hf, *, path)       the family's config, validated (InputError
                                    naming the key)
  kind_of(hf, state_keys, *, path)  "encoder", or the family's full kind when
                                    the directory holds the pretraining head
  from_hf_state_dict(state, config, kind, *, path) -> params (float32 numpy)
  to_hf_state_dict(params, config, *, kind, dtype) -> {hf key: array}
  hf_config(config, kind, dtype)    config.json as transformers writes it
  write_tokenizer(directory, vocabulary)
                                    tokenizer files giving exactly the
                                    vocabulary's ids

This module holds what every family shares: which module reads a
directory's config.json, safetensors reading (never pickle), and the
vocabulary a directory's tokenizer files define.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from protjax import files
from protjax.errors import InputError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  """`tree[path[0]][path[1]]...`; KeyError naming the first missing level."""
  node = tree
  for i, name in enumerate(path):
    if not isinstance(node, Mapping) or name not in node:
      raise KeyError("/".join(path[: i + 1]))
    node = node[name]
  return node


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
  """`tree[path[0]]...[path[-1]] = value`, creating the levels on the way."""
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def validated_config(config_class, fields: Mapping[str, Any], *, path: Optional[str] = None):
  """`config_class(**fields)`: a config.json's fields through the config's own
  checks, whose ValueError becomes an InputError naming the file."""
  try:
    return config_class(**fields)
  except ValueError as e:
    if isinstance(e, InputError):
      raise
    raise InputError(f"invalid config: {e}", path=path) from None


def read_json(path: str) -> dict:
  """A JSON object from `path`; InputError naming the file otherwise."""
  if not files.isfile(path):  # local, or gs:// (a training run in a bucket)
    raise InputError("file not found", path=path)
  try:
    with files.open_file(path, "rb") as f:
      obj = json.loads(f.read().decode("utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"not valid JSON ({e})", path=path) from None
  if not isinstance(obj, dict):
    raise InputError("expected a JSON object", path=path)
  return obj


def mapping_modules() -> list:
  """The registered families' mapping modules (`registry.Family.hf_module`), once each."""
  from protjax.models import registry  # light: no jax until a model is built
  names = dict.fromkeys(f.hf_module for f in registry.FAMILIES.values() if f.hf_module)
  return [importlib.import_module(name) for name in names]


def model_type(hf: dict) -> Optional[str]:
  """config.json's `model_type`; configs older than that key (the released
  ProtBert's) name it by their architecture, e.g. `BertForMaskedLM` -> "bert"."""
  if hf.get("model_type"):
    return hf["model_type"]
  # Longest first: "albert" is not read as "bert".
  known = sorted((t for m in mapping_modules() for t in m.MODEL_TYPES), key=len, reverse=True)
  for architecture in hf.get("architectures") or ():
    for prefix in known:
      if str(architecture).lower().startswith(prefix):
        return prefix
  return None


def mapping_for(hf: dict, *, path: Optional[str] = None):
  """The family mapping module that reads this config.json (by its model type)."""
  model_type_ = model_type(hf)
  for module in mapping_modules():
    if model_type_ in module.MODEL_TYPES:
      return module
  known = sorted(t for module in mapping_modules() for t in module.MODEL_TYPES)
  raise InputError(f"config key 'model_type' is {model_type_!r}; protjax reads {known}",
                   path=path)


def load_safetensors(directory: str) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of `model.safetensors` (or its shards) and the file named in errors.

  Never reads pickle: a directory with only `pytorch_model.bin` is refused
  with the one-line recipe to convert it where the file is trusted.
  """
  from safetensors.numpy import load_file
  single = os.path.join(directory, SAFETENSORS_FILE)
  index = os.path.join(directory, SAFETENSORS_INDEX)
  if os.path.isfile(single):
    files, where = [single], single
  elif os.path.isfile(index):
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise InputError("no 'weight_map' object", path=index)
    files, where = [os.path.join(directory, f) for f in sorted(set(weight_map.values()))], index
  else:
    pickles = [f for f in PICKLE_FILES if os.path.exists(os.path.join(directory, f))]
    if pickles:
      raise InputError(
          f"only {pickles[0]} found: pickle files are not loaded (they can run code). "
          "Convert once where you trust the file, e.g. "
          "`AutoModel.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)`, "
          "and import OUT", path=directory)
    raise InputError(f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}", path=directory)
  state: dict[str, np.ndarray] = {}
  for f in files:
    try:
      part = load_file(f)
    except Exception as e:  # safetensors raises its own error types
      raise InputError(f"cannot read safetensors file: {e}", path=f) from None
    for key in part:
      if key in state:
        raise InputError(f"tensor {key!r} appears in more than one shard", path=f)
    state.update(part)
  return state, where


def read_tokens(directory: str) -> Optional[list[str]]:
  """The token list (index = id) of a directory's `vocab.txt` or `tokenizer.json`.

  `vocab.txt` (BERT's WordPiece vocabulary, one token a line) wins; else the
  vocabulary of `tokenizer.json`'s model (WordPiece / WordLevel: token -> id;
  Unigram: pieces in id order, SentencePiece's `▁` word marker dropped).
  None when the directory has neither.
  """
  vocab_txt = os.path.join(directory, "vocab.txt")
  if os.path.isfile(vocab_txt):
    try:
      with open(vocab_txt, encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError:
      raise InputError("not a UTF-8 text vocabulary", path=vocab_txt) from None
    while tokens and not tokens[-1]:
      tokens.pop()
    return tokens
  tokenizer_json = os.path.join(directory, "tokenizer.json")
  if not os.path.isfile(tokenizer_json):
    return None
  model = read_json(tokenizer_json).get("model") or {}
  vocab = model.get("vocab")
  if isinstance(vocab, dict):
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
      raise InputError("the tokenizer's vocabulary ids are not 0..n-1", path=tokenizer_json)
    tokens = [""] * len(ids)
    for token, i in vocab.items():
      tokens[i] = token
    return tokens
  if isinstance(vocab, list):
    return [str(piece[0]).lstrip("\u2581") or str(piece[0]) for piece in vocab]
  raise InputError("no vocabulary in the tokenizer's model", path=tokenizer_json)


def special_tokens(directory: str) -> dict[str, Any]:
  """`special_tokens_map.json` merged over `tokenizer_config.json` (either may be absent).

  Values are token strings (a dict with "content" is reduced to it).
  """
  out: dict[str, Any] = {}
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      for key, value in read_json(path).items():
        if isinstance(value, dict) and "content" in value:
          value = value["content"]
        out[key] = value
  return out
