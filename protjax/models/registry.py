"""Model families, registered in one place: family name -> `Family`.

Nothing after the model knows which family it runs. The trainer needs a
`Model` (t5x's: owns the module and the objective) with `init_variables`,
`loss_fn`, `flops_per_example` and `tokens_per_example`; export, import and
embedding need the encoder module, its parameter subtree, the vocabulary and
its framing tokens, and the Hugging Face weight mapping (`protjax.hf.<name>`).
A `Family` holds exactly those, so the code after the model has no
`if family == ...`.

Adding a family (Transformer-XL, XLNet, ...) = one model module, one
objective, one `protjax.hf` mapping module, gin files, and one entry in
`FAMILIES` (the `protjax.hf` reader and the gin registration find the modules
here).
"""
from __future__ import annotations

import dataclasses
import importlib
import pathlib
from typing import Any, Callable, Mapping

from protjax.errors import InputError

Shapes = Mapping[str, tuple[int, ...]]
ENCODER = "encoder"
GIN_MODELS = pathlib.Path(__file__).resolve().parents[2] / "gin_configs" / "models"


class EncoderDecoderAdapter:
  """`protjax.models.t5.EncoderDecoderModel` as a trainer Model.

  Lengths come from `encoder_input_tokens` and `decoder_target_tokens`; the
  model's FLOPs are per decoder target position, so tokens per example =
  target length.
  """

  def __init__(self, model, family: str = "prott5"):
    self.family = family
    self.model = model
    self.config = model.config
    self.module = model.module

  @staticmethod
  def _lengths(batch_shapes: Shapes) -> tuple[int, int]:
    try:
      return (batch_shapes["encoder_input_tokens"][1],
              batch_shapes["decoder_target_tokens"][1])
    except KeyError as e:
      raise InputError(f"an encoder-decoder model needs feature {e.args[0]!r}; "
                       f"the batch has {sorted(batch_shapes)}") from None

  def init_variables(self, rng, batch_shapes: Shapes) -> dict:
    input_length, target_length = self._lengths(batch_shapes)
    return self.model.init_variables(rng, 1, input_length, target_length)

  def loss_fn(self, params, batch, dropout_rng):
    return self.model.loss_fn(params, batch, dropout_rng)

  def flops_per_example(self, batch_shapes: Shapes) -> float:
    input_length, target_length = self._lengths(batch_shapes)
    return self.model.flops_per_token(input_length, target_length) * target_length

  def tokens_per_example(self, batch_shapes: Shapes) -> int:
    return self._lengths(batch_shapes)[1]


@dataclasses.dataclass(frozen=True)
class Family:
  """Everything protjax needs to know about one model family.

  Attributes:
    name: "prott5", "protbert", ...
    model_module: the `protjax.models` module holding the config class, the
      encoder and `encoder_params` (imported on first use: jax/flax are heavy).
    config_class: name of the config dataclass in `model_module`.
    encoder_class: name of the encoder-only linen module in `model_module`:
      `module(config)(tokens [b, l], segment_ids, positions) -> [b, l, d]`.
    objective: the pretraining objective (`protjax.data.preprocessors`) its
      tasks are named after: `{corpus}_{objective}`.
    full_kind: what an export with the pretraining head is called
      ("encoder_decoder": ProtT5's decoder; "masked_lm": BERT's MLM head;
      "discriminator": ELECTRA's discriminator with its head); the encoder
      alone is always "encoder".
    extra_kinds: further exports of the training tree (ELECTRA: "generator");
      the model module's `kind_params(params, kind)` selects their subtrees.
    vocabulary: () -> the released vocabulary (`tokenizer.TokenListVocabulary`),
      used when a model directory carries none.
    make_model: config -> the trainer Model.
    owns: config -> whether a config of `config_class` is this family's
      (ProtBert and ProtAlbert share one config class).
    hf_module: the `protjax.hf` weight-mapping module's name.
    layer_embedded: what `protjax-embed` writes, for the docs and the files.
    packable: whether `protjax-embed` may pack several proteins in a row
      (False for ProtTXL: where a protein's segments start, hence what its
      memory holds, would depend on the proteins packed before it).
  """
  name: str
  model_module: str
  config_class: str
  encoder_class: str
  objective: str
  full_kind: str
  vocabulary: Callable[[], Any]
  make_model: Callable[[Any], Any]
  owns: Callable[[Any], bool] = lambda config: True
  hf_module: str = ""
  layer_embedded: str = "the last hidden state"
  extra_kinds: tuple[str, ...] = ()
  packable: bool = True

  @property
  def kinds(self) -> tuple[str, ...]:
    return (ENCODER, self.full_kind) + self.extra_kinds

  def module(self):
    return importlib.import_module(self.model_module)

  def hf(self):
    return importlib.import_module(self.hf_module)

  def get_config(self, name: str, **overrides):
    """The config of a named size (`gin_configs/models/<family>_<name>.gin`) or a gin file."""
    sized = GIN_MODELS / f"{self.name}_{name}.gin"
    return self.module().get_config(str(sized) if sized.is_file() else name, **overrides)

  def config_from_dict(self, fields: Mapping[str, Any], *, path=None):
    """The config from its JSON fields; an unknown field or bad value is an InputError."""
    cls = getattr(self.module(), self.config_class)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise InputError(f"unknown {cls.__name__} field {unknown[0]!r}", path=path)
    try:
      config = cls(**fields)
    except (TypeError, ValueError) as e:
      raise InputError(f"invalid {cls.__name__}: {e}", path=path) from None
    if not self.owns(config):
      raise InputError(f"the config is not a {self.name} config", path=path)
    return config

  def encoder(self, config):
    """The encoder-only linen module for `config`."""
    return getattr(self.module(), self.encoder_class)(config)

  def encoder_params(self, params: Mapping[str, Any]) -> dict:
    """The encoder's subtrees of a full (training) parameter tree."""
    return self.module().encoder_params(params)

  def kind_params(self, params: Mapping[str, Any], kind: str) -> dict:
    """The subtrees a `kind` model holds, from a tree holding at least them.

    "encoder": `encoder_params`; the full kind: the whole tree, unless the
    model module selects (`kind_params`: ELECTRA's training tree holds two
    models, each export one). InputError when the tree lacks them.
    """
    if kind not in self.kinds:
      raise InputError(f"a {self.name} export is one of {self.kinds}, not {kind!r}")
    if kind == ENCODER:
      return self.encoder_params(params)
    select = getattr(self.module(), "kind_params", None)
    if select is not None:
      return select(params, kind)
    if sorted(params) == sorted(self.encoder_params(params)):
      raise InputError(f"{kind!r} asked for, but the params hold the encoder only")
    return dict(params)


def _prott5_model(config):
  from protjax.models import t5  # pylint: disable=import-outside-toplevel
  return EncoderDecoderAdapter(t5.EncoderDecoderModel(config))


def _bert_model(family: str):
  def make(config):
    from protjax.models import bert  # pylint: disable=import-outside-toplevel
    model = bert.EncoderMLMModel(config)
    model.family = family
    return model
  return make


def _electra_model(config):
  from protjax.models import electra  # pylint: disable=import-outside-toplevel
  return electra.ElectraRTDModel(config)


def _prottxl_model(config):
  from protjax.models import transfo_xl  # pylint: disable=import-outside-toplevel
  return transfo_xl.TransfoXLModel(config)


def _xlnet_model(config):
  from protjax.models import xlnet  # pylint: disable=import-outside-toplevel
  return xlnet.PermutationLMModel(config)


def _prott5_vocabulary():
  from protjax import tokenizer  # pylint: disable=import-outside-toplevel
  return tokenizer.TokenListVocabulary(tokenizer.prott5_tokens(), unk_token="<unk>",
                                       pad_token="<pad>", suffix=("</s>",))


def _protbert_vocabulary():
  from protjax import tokenizer  # pylint: disable=import-outside-toplevel
  return tokenizer.TokenListVocabulary(tokenizer.protbert_tokens(), unk_token="[UNK]",
                                       pad_token="[PAD]", prefix=("[CLS]",), suffix=("[SEP]",))


def _prottxl_vocabulary():
  """ProtBert's 30 tokens; a protein is its residues then `[SEP]`, the end-of-protein
  token that separates proteins in the training stream (no `[CLS]`)."""
  from protjax import tokenizer  # pylint: disable=import-outside-toplevel
  return tokenizer.TokenListVocabulary(tokenizer.protbert_tokens(), unk_token="[UNK]",
                                       pad_token="[PAD]", suffix=("[SEP]",))


def _protxlnet_vocabulary():
  """ProtBert's 30 tokens framed as XLNet frames: `residues [SEP] [CLS]`."""
  from protjax import tokenizer  # pylint: disable=import-outside-toplevel
  return tokenizer.TokenListVocabulary(tokenizer.protbert_tokens(), unk_token="[UNK]",
                                       pad_token="[PAD]", suffix=("[SEP]", "[CLS]"))


FAMILIES: Mapping[str, Family] = {
    "prott5": Family(
        name="prott5", model_module="protjax.models.t5", config_class="T5Config",
        encoder_class="T5Encoder", objective="t5", full_kind="encoder_decoder",
        vocabulary=_prott5_vocabulary, make_model=_prott5_model, hf_module="protjax.hf.t5",
        layer_embedded="the encoder's last hidden state (after its final norm)"),
    "protbert": Family(
        name="protbert", model_module="protjax.models.bert", config_class="BertConfig",
        encoder_class="BertEncoder", objective="bert", full_kind="masked_lm",
        vocabulary=_protbert_vocabulary, make_model=_bert_model("protbert"),
        owns=lambda config: not config.share_layers, hf_module="protjax.hf.bert",
        layer_embedded="the last encoder layer's output (no MLM head)"),
    "protalbert": Family(
        name="protalbert", model_module="protjax.models.bert", config_class="BertConfig",
        encoder_class="BertEncoder", objective="bert", full_kind="masked_lm",
        vocabulary=_protbert_vocabulary, make_model=_bert_model("protalbert"),
        owns=lambda config: config.share_layers, hf_module="protjax.hf.bert",
        layer_embedded="the last (shared) encoder layer's output (no MLM head)"),
    "protelectra": Family(
        name="protelectra", model_module="protjax.models.electra",
        config_class="ElectraConfig", encoder_class="ElectraEncoder", objective="electra",
        full_kind="discriminator", extra_kinds=("generator",),
        vocabulary=_protbert_vocabulary, make_model=_electra_model,
        hf_module="protjax.hf.electra",
        layer_embedded="the discriminator's last encoder layer output (no head)"),
    "protxlnet": Family(
        name="protxlnet", model_module="protjax.models.xlnet", config_class="XLNetConfig",
        encoder_class="XLNetEncoder", objective="xlnet", full_kind="lm_head",
        vocabulary=_protxlnet_vocabulary, make_model=_xlnet_model, hf_module="protjax.hf.xlnet",
        packable=False,
        layer_embedded="the last layer's content stream (no LM head); proteins longer than "
                       "the target length segment by segment through the memory"),
    "prottxl": Family(
        name="prottxl", model_module="protjax.models.transfo_xl",
        config_class="TransfoXLConfig", encoder_class="TransfoXLEncoder", objective="txl",
        full_kind="lm", vocabulary=_prottxl_vocabulary, make_model=_prottxl_model,
        hf_module="protjax.hf.transfo_xl", packable=False,
        layer_embedded="the last layer's output, the protein read segment by segment with "
                       "the memory (each residue sees only its left context)"),
}


def get_family(name: str) -> Family:
  """The registered family `name`; InputError naming the choices otherwise."""
  if name not in FAMILIES:
    raise InputError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
  return FAMILIES[name]


def family_of(config: Any) -> Family:
  """The family a config object belongs to (by its class, then `owns`)."""
  for family in FAMILIES.values():
    if (type(config).__name__ == family.config_class
        and type(config).__module__ == family.model_module and family.owns(config)):
      return family
  raise ValueError(f"no registered family has config {type(config).__name__}")


def get_model(family: str = "prott5", config: Any = None):
  """The trainer Model for `family`.

  Args:
    family: one of FAMILIES.
    config: the family's config dataclass (gin: `@T5Config()`, `@BertConfig()`,
      `@ElectraConfig()`, `@TransfoXLConfig()`, `@XLNetConfig()`),
      or a size name ("tiny", "xl", ...), or None for the family's tiny size.
  """
  fam = get_family(family)
  if config is None:
    config = fam.get_config("tiny")
  elif isinstance(config, str):
    config = fam.get_config(config)
  if not fam.owns(config):
    raise InputError(f"get_model.family is {family!r} but the config is not one of its "
                     f"configs ({config})")
  return fam.make_model(config)


GIN_CONFIGURABLES = (get_model,)
