"""Export and import models of every family: protjax params checkpoints and Hugging Face.

Three formats, the same for every family (`protjax.models.registry`):
- protjax *params checkpoint*: a directory with `config.json` (the family's
  config fields plus `"family"`, `"kind"` — "encoder", the family's full
  kind, e.g. "encoder_decoder" for ProtT5, "masked_lm" for ProtBert,
  "discriminator" for ProtElectra, or ProtElectra's "generator" — and
  `"vocabulary"`, the token list and framing tokens) and `params/`, an orbax
  checkpoint of `{'params': params}`. The embedder loads it; `protjax-import`
  writes it.
- Hugging Face directory: `config.json`, `model.safetensors` (float32 or
  float16, like the released `prot_t5_xl_half_uniref50-enc`) and tokenizer
  files giving exactly the model's ids, loadable with transformers
  (`T5EncoderModel`, `BertModel`, `AlbertModel`, ... and `AutoTokenizer`). The
  weight mapping is one module per family (`protjax.hf`).
- Training checkpoints (`model_dir`, written by the trainer) are read through
  `protjax.checkpoints.restore_params` and `model_dir/model_config.json`.

`load_model` reads any of the three (auto-detected). Every writer builds its
output in a sibling `<dir>.tmp-XXXX` and renames it into place, so an
interrupted export leaves nothing half-written under the final name. Nothing
here reads pickle: HF weights are loaded from safetensors only.

Cloud Storage (gs://...): every reader and writer here takes a URL
(`protjax.files`). An export to a URL is built locally and uploaded with its
config.json last (`files.atomic_directory`): until config.json is there, no
loader takes the folder for a model. A params checkpoint or HF directory on
a URL is downloaded to a temporary folder to be read (`files.local_copy`); a
training run's checkpoints are read by orbax where they are.

CLIs: `protjax-export` (`export_main`) and `protjax-import` (`import_main`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from protjax import files
from protjax.errors import InputError, cli_main
from protjax.files import atomic_directory, default_mode
from protjax.hf import SAFETENSORS_FILE
from protjax.hf import read_json as _read_json

ENCODER = "encoder"
GENERATOR = "generator"  # ProtElectra's other model (`--generator`)
CONFIG_FILE = "config.json"
PARAMS_SUBDIR = "params"
EXPORT_DTYPES = {"float32": np.float32, "float16": np.float16}


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


# --- configs <-> JSON -------------------------------------------------------
def config_to_dict(config: Any) -> dict[str, Any]:
  """A family config's fields as a JSON-able dict."""
  return dataclasses.asdict(config)


@dataclasses.dataclass
class LoadedModel:
  """A model read from any directory protjax accepts.

  Attributes:
    params: the parameter tree (host numpy arrays unless a target was given).
    config: the family's config dataclass.
    kind: "encoder", or the family's full kind ("encoder_decoder",
      "masked_lm") when the pretraining head is included.
    family: the `registry.Family`.
    vocabulary: the `tokenizer.TokenListVocabulary` the model was trained with.
  """
  params: Any
  config: Any
  kind: str
  family: Any
  vocabulary: Any


def _family_of(config: Any):
  from protjax.models import registry  # deferred: keeps this module light
  return registry.family_of(config)


def _family_named(name: Any, *, path: str):
  from protjax.models import registry
  if name not in registry.FAMILIES:
    raise InputError(f"config key 'family' is {name!r}, expected one of "
                     f"{sorted(registry.FAMILIES)} (not a protjax model)", path=path)
  return registry.FAMILIES[name]


def _select(params: Mapping[str, Any], family, kind: str) -> dict[str, Any]:
  """The subtrees a `kind` export holds (`registry.Family.kind_params`)."""
  return family.kind_params(params, kind)


def _vocabulary_from_dict(meta: Mapping[str, Any], family, *, path: str):
  from protjax.tokenizer import TokenListVocabulary
  stored = meta.get("vocabulary")
  if stored is None:
    return family.vocabulary()
  try:
    return TokenListVocabulary.from_dict(stored)
  except (KeyError, TypeError, ValueError) as e:
    raise InputError(f"config key 'vocabulary' is not a vocabulary ({e})", path=path) from None


# --- params checkpoint (orbax) ----------------------------------------------
def save_params_checkpoint(directory: str | os.PathLike, params: Any, config: Any,
                           kind: str = ENCODER, *, overwrite: bool = False,
                           vocabulary: Any = None) -> str:
  """Writes a protjax params checkpoint atomically; returns its path.

  Args:
    directory: output directory (must not exist unless `overwrite`).
    params: the protjax tree; with `kind="encoder"` only the encoder's
      subtrees are written (a decoder or MLM head is dropped).
    config: the model's config (its class tells the family).
    kind: "encoder" or the family's full kind.
    vocabulary: the model's `TokenListVocabulary` (default: the family's
      released one), stored in config.json.
  """
  import orbax.checkpoint as ocp  # deferred: heavy
  family = _family_of(config)
  # numpy or (sharded) jax leaves alike: orbax writes each shard from its host.
  params = _select(params, family, kind)
  vocabulary = vocabulary or family.vocabulary()
  meta = dict(config_to_dict(config), family=family.name, kind=kind,
              vocabulary=vocabulary.to_dict())
  with atomic_directory(directory, overwrite=overwrite, last=[CONFIG_FILE]) as tmp:
    _write_json(os.path.join(tmp, CONFIG_FILE), meta)
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, PARAMS_SUBDIR), {"params": params})
      checkpointer.wait_until_finished()
  return files.absolute(directory)


def is_params_checkpoint(directory: str | os.PathLike) -> bool:
  """True for a protjax params checkpoint (config.json with a family, and params/)."""
  directory = os.fspath(directory)
  path = files.join(directory, CONFIG_FILE)
  if not (files.isfile(path) and files.isdir(files.join(directory, PARAMS_SUBDIR))):
    return False
  try:
    with files.open_file(path, "rb") as f:
      return "family" in json.loads(f.read().decode("utf-8"))
  except (OSError, ValueError, TypeError):
    return False


def load_params_checkpoint(directory: str | os.PathLike, target: Any = None) -> LoadedModel:
  """Reads a protjax params checkpoint.

  Args:
    directory: written by `save_params_checkpoint` / `protjax-import`.
    target: optional abstract param tree (`jax.ShapeDtypeStruct` leaves with
      shardings) to restore sharded device arrays; default: host numpy arrays.
  A URL (gs://...) is downloaded to a temporary folder first.
  """
  if files.is_url(directory):
    with files.local_copy(directory) as local:
      return load_params_checkpoint(local, target)
  import jax
  import orbax.checkpoint as ocp
  directory = os.fspath(directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  meta = _read_json(config_path)
  family = _family_named(meta.get("family"), path=config_path)
  kind = meta.get("kind")
  if kind not in family.kinds:
    raise InputError(f"config key 'kind' is {kind!r}, expected one of {family.kinds}",
                     path=config_path)
  vocabulary = _vocabulary_from_dict(meta, family, path=config_path)
  fields = {k: v for k, v in meta.items() if k not in ("family", "kind", "vocabulary")}
  config = family.config_from_dict(fields, path=config_path)
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
  return LoadedModel(restored["params"], config, kind, family, vocabulary)


# --- Hugging Face export -------------------------------------------------------
def write_tokenizer(directory: str, family, vocabulary) -> None:
  """The family's tokenizer files for `vocabulary` (ids exactly protjax's)."""
  family.hf().write_tokenizer(directory, vocabulary)


def export_hf(params: Any, config: Any, directory: str | os.PathLike, dtype: str = "float32",
              *, kind: str = ENCODER, overwrite: bool = False, tokenizer: bool = True,
              vocabulary: Any = None) -> str:
  """Writes a Hugging Face directory atomically; returns its path.

  Args:
    params: protjax param tree (the head is dropped for `kind="encoder"`).
    config: its config (the class tells the family).
    directory: output directory.
    dtype: "float32" or "float16" (weights rounded to half, like the released
      `prot_t5_xl_half_uniref50-enc`).
    kind: "encoder" (`T5EncoderModel`, `BertModel`, `AlbertModel`,
      `ElectraModel`), the family's full kind (`T5ForConditionalGeneration`,
      `BertForMaskedLM`, `ElectraForPreTraining`, ...), or another of its
      kinds (ProtElectra's "generator", `ElectraForMaskedLM`).
    tokenizer: also write the tokenizer files.
    vocabulary: the model's vocabulary (default: the family's released one).
  """
  from safetensors.numpy import save_file
  if dtype not in EXPORT_DTYPES:
    raise InputError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
  family = _family_of(config)
  params = _select(params, family, kind)
  mapping = family.hf()
  try:
    state = mapping.to_hf_state_dict(params, config, kind=kind, dtype=EXPORT_DTYPES[dtype])
  except ValueError as e:
    raise InputError(f"params do not fit the config: {e}") from None
  with atomic_directory(directory, overwrite=overwrite, last=[CONFIG_FILE]) as tmp:
    _write_json(os.path.join(tmp, CONFIG_FILE), mapping.hf_config(config, kind, dtype))
    # format=pt: transformers refuses safetensors files without it.
    save_file(state, os.path.join(tmp, SAFETENSORS_FILE), metadata={"format": "pt"})
    os.chmod(os.path.join(tmp, SAFETENSORS_FILE), default_mode())  # safetensors: 0600
    if tokenizer:
      write_tokenizer(tmp, family, vocabulary or family.vocabulary())
  return files.absolute(directory)


# --- Hugging Face import -------------------------------------------------------
# The default framing tokens' names in tokenizer_config.json / special_tokens_map.json.
_SPECIAL_KEYS = {"[CLS]": "cls_token", "[SEP]": "sep_token", "</s>": "eos_token",
                 "[PAD]": "pad_token", "<pad>": "pad_token", "[UNK]": "unk_token",
                 "<unk>": "unk_token"}
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def directory_vocabulary(directory: str, family, vocab_size: int):
  """The vocabulary a Hugging Face directory's tokenizer files define.

  The token list comes from `vocab.txt` or `tokenizer.json`, the names of the
  special tokens from `tokenizer_config.json` / `special_tokens_map.json`
  (the family's released names by default). No tokenizer files: the family's
  released vocabulary. Raises InputError (naming the directory) for a list
  whose size differs from the model's, one without the 20 standard residues
  as single tokens, or one that lacks a special token the family frames
  proteins with.
  """
  from protjax import hf
  from protjax.tokenizer import TokenListVocabulary
  released = family.vocabulary()
  tokens = hf.read_tokens(directory)
  if tokens is None:
    tokens = released.tokens()
  if len(tokens) != vocab_size:
    raise InputError(f"the tokenizer has {len(tokens)} tokens but the model's vocab_size is "
                     f"{vocab_size}", path=directory)
  missing = [r for r in STANDARD_RESIDUES if r not in tokens]
  if missing:
    raise InputError(f"the vocabulary has no token for residue(s) {''.join(missing)}: not a "
                     "residue-level protein vocabulary", path=directory)
  specials = hf.special_tokens(directory)
  names = released.to_dict()
  rename = lambda t: specials.get(_SPECIAL_KEYS.get(t, ""), t)
  try:
    return TokenListVocabulary(tokens, unk_token=rename(names["unk_token"]),
                               pad_token=rename(names["pad_token"]),
                               prefix=[rename(t) for t in names["prefix"]],
                               suffix=[rename(t) for t in names["suffix"]])
  except ValueError as e:
    raise InputError(f"{e} (needed to frame proteins as {family.name} does)",
                     path=directory) from None


def import_hf(directory: str | os.PathLike, kind: Optional[str] = None) -> LoadedModel:
  """Reads a Hugging Face directory (safetensors only) into protjax params.

  The family is read from config.json's `model_type` (`protjax.hf`), the
  vocabulary from the tokenizer files (`directory_vocabulary`).

  Args:
    directory: `config.json` + `model.safetensors` (or a sharded index), e.g.
      a `T5EncoderModel`, `T5ForConditionalGeneration`, `BertModel`,
      `BertForMaskedLM`, `AlbertModel` or `AlbertForMaskedLM`. A protjax
      params checkpoint (which also has a config.json) is recognised and
      loaded as such, so callers need not tell the formats apart.
    kind: "encoder" keeps only the encoder of a full model; default: what the
      directory holds. A URL (gs://...) is downloaded to a temporary folder.
  Raises:
    InputError naming the offending config key or tensor.
  """
  from protjax import hf
  from protjax.models import registry
  directory = os.fspath(directory)
  if not files.isdir(directory):
    raise InputError("directory not found", path=directory)
  if files.is_url(directory):
    with files.local_copy(directory) as local:
      return import_hf(local, kind)
  if is_params_checkpoint(directory):
    loaded = load_params_checkpoint(directory)
    return _reduce(loaded, kind, where=directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  hf_dict = _read_json(config_path)
  mapping = hf.mapping_for(hf_dict, path=config_path)
  family = registry.get_family(mapping.family_of(hf_dict))
  config = mapping.config_from_hf(hf_dict, path=config_path)
  vocabulary = directory_vocabulary(directory, family, int(config.vocab_size))
  state, where = hf.load_safetensors(directory)
  stored_kind = mapping.kind_of(hf_dict, state.keys(), path=config_path)
  kind = stored_kind if kind is None else kind
  if kind not in family.kinds:
    raise ValueError(f"kind must be one of {family.kinds}, got {kind!r}")
  if kind != ENCODER and stored_kind == ENCODER:
    raise InputError(f"the directory holds an encoder only, not {kind!r}", path=config_path)
  params = mapping.from_hf_state_dict(state, config, kind, path=where)
  return LoadedModel(params, config, kind, family, vocabulary)


def _reduce(loaded: LoadedModel, kind: Optional[str], *, where: str) -> LoadedModel:
  """`loaded` as `kind` (None: as stored): the encoder of a full model, or an error."""
  if kind is None or kind == loaded.kind:
    return loaded
  if kind == ENCODER:
    return dataclasses.replace(loaded, params=loaded.family.encoder_params(loaded.params),
                               kind=ENCODER)
  raise InputError(f"the model holds {loaded.kind!r}, not {kind!r}", path=where)


# --- training runs, and any model directory ---------------------------------------
TRAINING_CONFIG_FILE = "model_config.json"


def is_training_run(directory: str | os.PathLike) -> bool:
  """True for a protjax-train model_dir (model_config.json and checkpoints/)."""
  directory = os.fspath(directory)
  # "checkpoints" is protjax.checkpoints.CHECKPOINT_SUBDIR, not imported here:
  # that module pulls in orbax, which load_training_run reports if missing.
  return (files.isfile(files.join(directory, TRAINING_CONFIG_FILE))
          and files.isdir(files.join(directory, "checkpoints")))


def load_training_run(model_dir: str | os.PathLike, step: Optional[int] = None
                      ) -> LoadedModel:
  """The model of a training run (`protjax.checkpoints`, model_config.json).

  `step`: a checkpoint step; default the latest complete one. Params are the
  full tree the run trains (host arrays); a run written before families were
  recorded is ProtT5.
  """
  model_dir = os.fspath(model_dir)
  try:
    from protjax import checkpoints
  except ImportError as e:
    raise InputError(f"training checkpoints cannot be read here ({e})") from None
  config_path = files.join(model_dir, TRAINING_CONFIG_FILE)
  fields = _read_json(config_path)
  family = _family_named(fields.pop("family", "prott5"), path=config_path)
  config = family.config_from_dict(fields, path=config_path)
  try:
    params = checkpoints.restore_params(model_dir, step=step)
  except FileNotFoundError as e:
    raise InputError(str(e), path=model_dir) from None
  if list(params) == ["params"]:
    params = params["params"]
  return LoadedModel(params, config, family.full_kind, family, family.vocabulary())


def load_model(directory: str | os.PathLike, kind: Optional[str] = None,
               step: Optional[int] = None) -> LoadedModel:
  """Any model directory: a training run (its latest checkpoint, or `step`),
  a params checkpoint or a Hugging Face directory, auto-detected.

  `kind="encoder"` reduces a full model to its encoder.
  """
  directory = os.fspath(directory)
  if files.isfile(directory):  # local, or a training run in a bucket (gs://)
    raise InputError("is a file, not a model directory (protjax reads params checkpoints, "
                     "training runs and Hugging Face directories; pickle files are never "
                     "loaded)", path=directory)
  if not files.isdir(directory):
    raise InputError("model directory does not exist", path=directory)
  if is_training_run(directory):
    return _reduce(load_training_run(directory, step), kind, where=directory)
  if step is not None:
    raise InputError("--step applies to a training run directory only", path=directory)
  return import_hf(directory, kind)


# --- CLIs --------------------------------------------------------------------------
def _export_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="protjax-export",
      description="Export a model of any family (ProtT5, ProtBert, ProtAlbert, "
      "ProtElectra): its encoder as an encoder-only protjax params checkpoint (what "
      "protjax-embed loads), or a Hugging Face directory (config.json, model.safetensors, "
      "tokenizer files) loadable with transformers (T5EncoderModel, BertModel, "
      "AlbertModel, ElectraModel, ... and AutoTokenizer). The output is written to a "
      "temporary directory and renamed when complete.")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model_dir", help="training run directory (checkpoints/ and "
                   "model_config.json, as written by protjax-train)")
  src.add_argument("--params_checkpoint", help="protjax params checkpoint directory "
                   "(e.g. written by protjax-import or an earlier export)")
  p.add_argument("--step", type=int, default=None,
                 help="with --model_dir: checkpoint step (default: latest complete)")
  p.add_argument("--output", required=True, help="output directory (must not exist); may "
                 "be gs://...: built locally and uploaded, config.json last")
  p.add_argument("--format", choices=("params", "hf"), default="params",
                 help="params: protjax orbax params checkpoint; hf: Hugging Face "
                 "directory (default: %(default)s)")
  p.add_argument("--dtype", choices=sorted(EXPORT_DTYPES), default="float32",
                 help="--format hf: weight dtype; float16 halves the size like the released "
                 "prot_t5_xl_half_uniref50-enc (default: %(default)s)")
  what = p.add_mutually_exclusive_group()
  what.add_argument("--full", action="store_true",
                    help="export the whole pretrained model with its head (ProtT5: the "
                    "decoder, T5ForConditionalGeneration; ProtBert/ProtAlbert: the MLM head, "
                    "BertForMaskedLM/AlbertForMaskedLM; ProtElectra: the discriminator with "
                    "its replaced-token head, ElectraForPreTraining) instead of the encoder "
                    "only")
  what.add_argument("--generator", action="store_true",
                    help="ProtElectra: export the generator (ElectraForMaskedLM, with the "
                    "shared embeddings) instead of the discriminator's encoder")
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
    loaded = load_training_run(args.model_dir, args.step)
  else:
    loaded = load_params_checkpoint(args.params_checkpoint)
  kind = loaded.family.full_kind if args.full else ENCODER
  if args.generator:
    if GENERATOR not in loaded.family.kinds:
      raise InputError(f"--generator: a {loaded.family.name} model has no generator (only "
                       "ProtElectra trains one)")
    kind = GENERATOR
  if args.format == "hf":
    out = export_hf(loaded.params, loaded.config, args.output, args.dtype, kind=kind,
                    overwrite=args.overwrite, vocabulary=loaded.vocabulary)
  else:
    out = save_params_checkpoint(args.output, loaded.params, loaded.config, kind,
                                 overwrite=args.overwrite, vocabulary=loaded.vocabulary)
  print(f"wrote {loaded.family.name} {kind.replace('_', '-')} {args.format} export to {out}",
        file=sys.stderr)
  return 0


def _import_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="protjax-import",
      description="Import a Hugging Face directory (ProtT5: T5ForConditionalGeneration or "
      "T5EncoderModel; ProtBert/ProtAlbert: BertModel, BertForMaskedLM, AlbertModel, "
      "AlbertForMaskedLM; ProtElectra: ElectraModel, ElectraForPreTraining, "
      "ElectraForMaskedLM (the generator); config.json + model.safetensors, never pickle; "
      "the family is detected, the vocabulary read from vocab.txt / tokenizer.json) as a "
      "protjax params checkpoint, to embed with or to continue pretraining from the "
      "released weights.")
  p.add_argument("hf_dir", help="Hugging Face model directory (local or gs://...)")
  p.add_argument("out_dir", help="output params checkpoint directory (must not exist; "
                 "local or gs://..., uploaded with config.json last)")
  p.add_argument("--encoder_only", action="store_true",
                 help="keep only the encoder of a full model (drop the decoder / MLM head)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
  return p


@cli_main
def import_main(argv: Optional[Sequence[str]] = None) -> int:
  """`protjax-import`: see `--help`."""
  args = _import_parser().parse_args(argv)
  loaded = import_hf(args.hf_dir, ENCODER if args.encoder_only else None)
  out = save_params_checkpoint(args.out_dir, loaded.params, loaded.config, loaded.kind,
                               overwrite=args.overwrite, vocabulary=loaded.vocabulary)
  print(f"wrote {loaded.family.name} {loaded.kind.replace('_', '-')} params checkpoint to "
        f"{out}", file=sys.stderr)
  return 0
