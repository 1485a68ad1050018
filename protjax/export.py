"""Export ProtT5 (encoder-only orbax checkpoint, Hugging Face directory) and import HF T5.

Three formats:
- protjax *params checkpoint*: a directory with `config.json` (the `T5Config`
  fields plus `"family": "prott5"` and `"kind": "encoder" | "encoder_decoder"`)
  and `params/`, an orbax checkpoint of `{'params': params}`. The embedder loads
  it; `protjax-import` writes it.
- Hugging Face directory: `config.json`, `model.safetensors` (float32 or
  float16, like the released `prot_t5_xl_half_uniref50-enc`) and tokenizer
  files, loadable with `T5EncoderModel` / `T5ForConditionalGeneration` and
  `AutoTokenizer` / `T5Tokenizer`, no sentencepiece model needed.
- Training checkpoints (`model_dir`, written by the trainer) are read through
  `protjax.checkpoints.restore_params` and `model_dir/model_config.json`.

Every writer builds its output in a sibling `<dir>.tmp-XXXX` and renames it into
place, so an interrupted export leaves nothing half-written under the final
name. Nothing here reads pickle: HF weights are loaded from safetensors only.

CLIs: `protjax-export` (`export_main`) and `protjax-import` (`import_main`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from protjax import hf_convert
from protjax.errors import InputError, cli_main
from protjax.hf_convert import ENCODER, ENCODER_DECODER, KINDS

FAMILY = "prott5"
CONFIG_FILE = "config.json"
PARAMS_SUBDIR = "params"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
EXPORT_DTYPES = {"float32": np.float32, "float16": np.float16}


# --- atomic directories ------------------------------------------------------
@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
  """Yields a fresh temporary sibling of `directory`; renamed to it on success.

  On an exception the temporary directory is removed and `directory` is left
  as it was. With `overwrite=True` an existing `directory` is replaced (moved
  aside first, deleted once the new one is in place); otherwise it is an error.
  """
  directory = os.path.abspath(os.fspath(directory))
  if os.path.lexists(directory) and not overwrite:
    raise InputError("output directory exists (pass overwrite=True / --overwrite to replace it)",
                     path=directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
  try:
    yield tmp
    old = None
    if os.path.lexists(directory):
      old = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".old-", dir=parent)
      os.rmdir(old)
      os.rename(directory, old)
    os.rename(tmp, directory)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise InputError("file not found", path=path)
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"not valid JSON ({e})", path=path) from None
  if not isinstance(obj, dict):
    raise InputError("expected a JSON object", path=path)
  return obj


# --- T5Config <-> JSON -------------------------------------------------------
def config_to_dict(config: Any) -> dict[str, Any]:
  """The `T5Config` fields as a JSON-able dict."""
  return dataclasses.asdict(config)


def config_from_dict(fields: Mapping[str, Any], *, path: Optional[str] = None,
                     ignore: Sequence[str] = ()) -> Any:
  """A `T5Config` from its JSON fields; an unknown field is an InputError naming it."""
  from protjax.models.t5 import T5Config  # deferred: the model pulls in jax/flax
  known = {f.name for f in dataclasses.fields(T5Config)}
  for key in fields:
    if key not in known and key not in ignore:
      raise InputError(f"unknown T5Config field {key!r}", path=path)
  try:
    return T5Config(**{k: v for k, v in fields.items() if k in known})
  except (TypeError, ValueError) as e:
    raise InputError(f"invalid T5Config: {e}", path=path) from None


def _select(params: Mapping[str, Any], kind: str) -> dict[str, Any]:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if kind == ENCODER:
    from protjax.models.t5 import encoder_params  # deferred: the model pulls in jax/flax
    return encoder_params(params)
  if "decoder" not in params:
    raise InputError("kind 'encoder_decoder' asked for, but the params have no decoder")
  return dict(params)


# --- params checkpoint (orbax) ----------------------------------------------
def save_params_checkpoint(directory: str | os.PathLike, params: Any, config: Any,
                           kind: str = ENCODER, *, overwrite: bool = False) -> str:
  """Writes a protjax params checkpoint atomically; returns its path.

  Args:
    directory: output directory (must not exist unless `overwrite`).
    params: the protjax tree; with `kind="encoder"` only `token_embedder` and
      `encoder` are written (a decoder is dropped).
    config: the model's `T5Config`.
    kind: "encoder" or "encoder_decoder".
  """
  import orbax.checkpoint as ocp  # deferred: heavy
  # numpy or (sharded) jax leaves alike: orbax writes each shard from its host.
  params = _select(params, kind)
  meta = dict(config_to_dict(config), family=FAMILY, kind=kind)
  with atomic_directory(directory, overwrite=overwrite) as tmp:
    _write_json(os.path.join(tmp, CONFIG_FILE), meta)
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, PARAMS_SUBDIR), {"params": params})
      checkpointer.wait_until_finished()
  return os.path.abspath(os.fspath(directory))


def is_params_checkpoint(directory: str | os.PathLike) -> bool:
  """True for a protjax params checkpoint (config.json with family, and params/)."""
  directory = os.fspath(directory)
  path = os.path.join(directory, CONFIG_FILE)
  if not (os.path.isfile(path) and os.path.isdir(os.path.join(directory, PARAMS_SUBDIR))):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f).get("family") == FAMILY
  except (OSError, ValueError, AttributeError):
    return False


def load_params_checkpoint(directory: str | os.PathLike, target: Any = None
                           ) -> tuple[dict[str, Any], Any, str]:
  """Reads a protjax params checkpoint.

  Args:
    directory: written by `save_params_checkpoint` / `protjax-import`.
    target: optional abstract param tree (`jax.ShapeDtypeStruct` leaves with
      shardings) to restore sharded device arrays; default: host numpy arrays.
  Returns:
    `(params, config, kind)`.
  """
  import jax
  import orbax.checkpoint as ocp
  directory = os.fspath(directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  meta = _read_json(config_path)
  if meta.get("family") != FAMILY:
    raise InputError(f"config key 'family' is {meta.get('family')!r}, expected {FAMILY!r} "
                     "(not a protjax params checkpoint)", path=config_path)
  kind = meta.get("kind")
  if kind not in KINDS:
    raise InputError(f"config key 'kind' is {kind!r}, expected one of {KINDS}", path=config_path)
  config = config_from_dict(meta, path=config_path, ignore=("family", "kind"))
  params_path = os.path.abspath(os.path.join(directory, PARAMS_SUBDIR))
  if not os.path.isdir(params_path):
    raise InputError("no params/ checkpoint next to config.json", path=directory)
  with ocp.StandardCheckpointer() as checkpointer:
    if target is None:
      metadata = checkpointer.metadata(params_path).item_metadata
      tree = getattr(metadata, "tree", metadata)
      # ShapeDtypeStruct leaves without sharding restore as host numpy arrays.
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)["params"]
    restored = checkpointer.restore(params_path, {"params": target})
  return restored["params"], config, kind


# --- Hugging Face export -------------------------------------------------------
def _tokenizer_json() -> str:
  """tokenizer.json of the ProtT5 tokenizer, built without any sentencepiece model.

  A Unigram model whose pieces are `▁A`, `▁L`, ... (one per residue) behind a
  whitespace + Metaspace pre-tokenizer, as the released ProtT5 tokenizer: for
  space-separated residues ("M K T") every residue is one piece, and `</s>` is
  appended by the template post-processor. transformers 5's `T5Tokenizer`
  rebuilds exactly this pipeline from the Unigram vocabulary, so `AutoTokenizer`,
  `T5Tokenizer` and `PreTrainedTokenizerFast` all give the same ids.

  Like the released tokenizer (and unlike `ProtT5Vocabulary`, which
  normalises), it expects space-separated upper-case residues and keeps
  U Z O B apart: map those to X first (`re.sub(r"[UZOB]", "X", seq)`), as
  protjax does by default, and the ids equal protjax's.
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

  from protjax.vocab import ProtT5Vocabulary
  vocab = ProtT5Vocabulary(map_rare_residues=False)
  tokens = vocab.tokens()
  residue_score = -math.log(len(vocab.residue_ids))
  pieces = [(t, 0.0) if t.startswith("<") else ("\u2581" + t, residue_score) for t in tokens]
  tokenizer = Tokenizer(models.Unigram(pieces, unk_id=vocab.unk_id, byte_fallback=False))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.WhitespaceSplit(),
      pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
  tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always",
                                         split=True)
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in tokens if t.startswith("<")])
  tokenizer.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab.eos_id)])
  return tokenizer.to_str(pretty=True)


def write_tokenizer(directory: str) -> None:
  """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
  with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(_tokenizer_json())
  extra = [f"<extra_id_{i}>" for i in range(100)]
  specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "additional_special_tokens": extra}
  _write_json(os.path.join(directory, "tokenizer_config.json"), dict(
      specials, tokenizer_class="T5Tokenizer", extra_ids=100, do_lower_case=False,
      model_max_length=1_000_000_000, clean_up_tokenization_spaces=False))
  _write_json(os.path.join(directory, "special_tokens_map.json"), specials)


def export_hf(params: Any, config: Any, directory: str | os.PathLike, dtype: str = "float32",
              *, kind: str = ENCODER, overwrite: bool = False, tokenizer: bool = True) -> str:
  """Writes a Hugging Face T5 directory atomically; returns its path.

  Args:
    params: protjax param tree (a decoder is dropped for `kind="encoder"`).
    config: its `T5Config`.
    directory: output directory.
    dtype: "float32" or "float16" (weights rounded to half, like the released
      `prot_t5_xl_half_uniref50-enc`).
    kind: "encoder" -> `T5EncoderModel`; "encoder_decoder" ->
      `T5ForConditionalGeneration`.
    tokenizer: also write the tokenizer files.
  """
  from safetensors.numpy import save_file
  if dtype not in EXPORT_DTYPES:
    raise InputError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
  params = _select(params, kind)
  try:
    state = hf_convert.to_hf_state_dict(params, config, kind=kind, dtype=EXPORT_DTYPES[dtype])
  except ValueError as e:
    raise InputError(f"params do not fit the config: {e}") from None
  with atomic_directory(directory, overwrite=overwrite) as tmp:
    _write_json(os.path.join(tmp, CONFIG_FILE), hf_convert.hf_config(config, kind, dtype))
    # format=pt: transformers refuses safetensors files without it.
    save_file(state, os.path.join(tmp, SAFETENSORS_FILE), metadata={"format": "pt"})
    if tokenizer:
      write_tokenizer(tmp)
  return os.path.abspath(os.fspath(directory))


# --- Hugging Face import -------------------------------------------------------
def _load_safetensors(directory: str) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of `model.safetensors` (or its shards); never reads pickle."""
  from safetensors.numpy import load_file
  single = os.path.join(directory, SAFETENSORS_FILE)
  index = os.path.join(directory, SAFETENSORS_INDEX)
  if os.path.isfile(single):
    files, where = [single], single
  elif os.path.isfile(index):
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise InputError("no 'weight_map' object", path=index)
    files, where = [os.path.join(directory, f) for f in sorted(set(weight_map.values()))], index
  else:
    pickles = [f for f in PICKLE_FILES if os.path.exists(os.path.join(directory, f))]
    if pickles:
      raise InputError(
          f"only {pickles[0]} found: pickle files are not loaded (they can run code). "
          "Convert once where you trust the file, e.g. "
          "`T5EncoderModel.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)`, "
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


def import_hf(directory: str | os.PathLike, kind: Optional[str] = None
              ) -> tuple[dict[str, Any], Any, str]:
  """Reads a Hugging Face T5 directory (safetensors) into protjax params.

  Args:
    directory: holds `config.json` and `model.safetensors` (or a sharded
      index) of a `T5ForConditionalGeneration` or `T5EncoderModel`.
    kind: "encoder" keeps only the encoder of a full model; default: what the
      directory holds. A protjax params checkpoint (which also has a
      config.json) is recognised and loaded as such, so callers need not tell
      the formats apart.
  Returns:
    `(params, config, kind)`, params float32 numpy.
  Raises:
    InputError naming the offending config key or tensor.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise InputError("directory not found", path=directory)
  if is_params_checkpoint(directory):
    params, config, stored_kind = load_params_checkpoint(directory)
    if kind == ENCODER and stored_kind != ENCODER:
      return _select(params, ENCODER), config, ENCODER
    if kind == ENCODER_DECODER and stored_kind != ENCODER_DECODER:
      raise InputError("params checkpoint holds an encoder only, not an encoder-decoder",
                       path=directory)
    return params, config, stored_kind
  config_path = os.path.join(directory, CONFIG_FILE)
  hf = _read_json(config_path)
  fields = hf_convert.config_fields_from_hf(hf, path=config_path)
  state, where = _load_safetensors(directory)
  stored_kind = hf_convert.hf_kind(hf, state.keys(), path=config_path)
  if kind is None:
    kind = stored_kind
  elif kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  elif kind == ENCODER_DECODER and stored_kind == ENCODER:
    raise InputError("a T5EncoderModel has no decoder to import", path=config_path)
  config = config_from_dict(fields)
  params = hf_convert.from_hf_state_dict(state, config, kind, path=where)
  return params, config, kind


# --- CLIs --------------------------------------------------------------------------
TRAINING_CONFIG_FILE = "model_config.json"


def is_training_run(directory: str | os.PathLike) -> bool:
  """True for a protjax-train model_dir (model_config.json and checkpoints/)."""
  directory = os.fspath(directory)
  # "checkpoints" is protjax.checkpoints.CHECKPOINT_SUBDIR, not imported here:
  # that module pulls in orbax, which load_training_run reports if missing.
  return (os.path.isfile(os.path.join(directory, TRAINING_CONFIG_FILE))
          and os.path.isdir(os.path.join(directory, "checkpoints")))


def load_training_run(model_dir: str | os.PathLike, step: Optional[int] = None
                      ) -> tuple[dict[str, Any], Any]:
  """Params and config of a training run (`protjax.checkpoints`, model_config.json).

  `step`: a checkpoint step; default the latest complete one. Params are the
  full tree the run trains (host arrays).
  """
  model_dir = os.fspath(model_dir)
  try:
    from protjax import checkpoints
  except ImportError as e:
    raise InputError(f"training checkpoints cannot be read here ({e})") from None
  config_path = os.path.join(model_dir, TRAINING_CONFIG_FILE)
  config = config_from_dict(_read_json(config_path), path=config_path,
                            ignore=("family", "kind"))
  try:
    params = checkpoints.restore_params(model_dir, step=step)
  except FileNotFoundError as e:
    raise InputError(str(e), path=model_dir) from None
  if "params" in params and "token_embedder" not in params:
    params = params["params"]
  return params, config


def _export_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="protjax-export",
      description="Export a ProtT5 model: its encoder as an encoder-only protjax params "
      "checkpoint (what protjax-embed loads), or a Hugging Face T5 directory "
      "(config.json, model.safetensors, tokenizer files) loadable with "
      "transformers' T5EncoderModel / T5ForConditionalGeneration and AutoTokenizer. "
      "The output is written to a temporary directory and renamed when complete.")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model_dir", help="training run directory (checkpoints/ and "
                   "model_config.json, as written by protjax-train)")
  src.add_argument("--params_checkpoint", help="protjax params checkpoint directory "
                   "(e.g. written by protjax-import or an earlier export)")
  p.add_argument("--step", type=int, default=None,
                 help="with --model_dir: checkpoint step (default: latest complete)")
  p.add_argument("--output", required=True, help="output directory (must not exist)")
  p.add_argument("--format", choices=("params", "hf"), default="params",
                 help="params: protjax orbax params checkpoint; hf: Hugging Face T5 "
                 "directory (default: %(default)s)")
  p.add_argument("--dtype", choices=sorted(EXPORT_DTYPES), default="float32",
                 help="--format hf: weight dtype; float16 halves the size like the released "
                 "prot_t5_xl_half_uniref50-enc (default: %(default)s)")
  p.add_argument("--keep_decoder", action="store_true",
                 help="export the full encoder-decoder (HF: T5ForConditionalGeneration) "
                 "instead of the encoder only")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  return p


@cli_main
def export_main(argv: Optional[Sequence[str]] = None) -> int:
  """`protjax-export`: see `--help`."""
  args = _export_parser().parse_args(argv)
  if args.step is not None and not args.model_dir:
    raise InputError("--step needs --model_dir")
  if args.format == "params" and args.dtype != "float32":
    raise InputError("--dtype applies to --format hf only (params checkpoints are float32)")
  if args.model_dir:
    params, config = load_training_run(args.model_dir, args.step)
  else:
    params, config, _ = load_params_checkpoint(args.params_checkpoint)
  kind = ENCODER_DECODER if args.keep_decoder else ENCODER
  if args.format == "hf":
    out = export_hf(params, config, args.output, args.dtype, kind=kind,
                    overwrite=args.overwrite)
  else:
    out = save_params_checkpoint(args.output, params, config, kind, overwrite=args.overwrite)
  print(f"wrote {kind.replace('_', '-')} {args.format} export to {out}", file=sys.stderr)
  return 0


def _import_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="protjax-import",
      description="Import a Hugging Face ProtT5 directory (T5ForConditionalGeneration or "
      "T5EncoderModel; config.json + model.safetensors, never pickle) as a protjax params "
      "checkpoint, to embed with or to continue pretraining from the released weights.")
  p.add_argument("hf_dir", help="Hugging Face model directory")
  p.add_argument("out_dir", help="output params checkpoint directory (must not exist)")
  p.add_argument("--encoder_only", action="store_true",
                 help="keep only the encoder of an encoder-decoder model")
  p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
  return p


@cli_main
def import_main(argv: Optional[Sequence[str]] = None) -> int:
  """`protjax-import`: see `--help`."""
  args = _import_parser().parse_args(argv)
  params, config, kind = import_hf(args.hf_dir, ENCODER if args.encoder_only else None)
  out = save_params_checkpoint(args.out_dir, params, config, kind, overwrite=args.overwrite)
  print(f"wrote {kind.replace('_', '-')} params checkpoint to {out}", file=sys.stderr)
  return 0
