"""Model families the trainer can run: family name -> Model wrapper.

The trainer (`protjax.trainer`) knows nothing about any family. It needs a
`Model` with four methods keyed on the batch's feature shapes
(`init_variables`, `loss_fn`, `flops_per_example`, `tokens_per_example`).
Each family's wrapper (t5x's `Model`: owns the module and the objective) is
adapted here, once, so the loop has no `if family == ...`.

Adding a family (ProtBert MLM, ELECTRA RTD, ...) = one adapter + one line in
`FAMILIES`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from protjax.errors import InputError

Shapes = Mapping[str, tuple[int, ...]]


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


def _prott5(config):
  from protjax.models import t5  # pylint: disable=import-outside-toplevel
  if config is None:
    config = t5.get_config("tiny")
  elif isinstance(config, str):
    config = t5.get_config(config)
  return EncoderDecoderAdapter(t5.EncoderDecoderModel(config))


FAMILIES: Mapping[str, Callable[[Any], Any]] = {
    "prott5": _prott5,
}


def get_model(family: str = "prott5", config: Any = None):
  """The trainer Model for `family`.

  Args:
    family: one of FAMILIES ("prott5").
    config: the family's config dataclass (gin: `@T5Config()`), or a size
      name ("tiny", "xl", ...), or None for the family's tiny size.
  """
  if family not in FAMILIES:
    raise InputError(f"unknown model family {family!r}; choose one of "
                     f"{sorted(FAMILIES)}")
  return FAMILIES[family](config)


GIN_CONFIGURABLES = (get_model,)
