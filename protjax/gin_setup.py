"""Gin stays at the edge: library modules never import gin.

A module that wants configurables exposed lists them in a module-level tuple
`GIN_CONFIGURABLES`; `register_all()` (called by entry points and tests before
parsing gin files) registers each one under the `protjax` module name, once.
Gin files then bind e.g. `T5Config.d_model = 1024`.

`check_binding` and `check_types` turn a bad value into one line naming the
binding (before anything runs, so a run directory is never created for it):
a value gin cannot parse (`train.model_dir=/path`, unquoted), or one whose
type contradicts the parameter's annotation (`train.train_steps='abc'`).
"""
from __future__ import annotations

import collections.abc
import importlib
import importlib.util
import tokenize
import types
import typing

import gin
from gin import config_parser

from protjax.errors import InputError

# Modules that may declare GIN_CONFIGURABLES; the ones not yet present are skipped.
MODULES = (
    "protjax.models.t5",
    "protjax.models.bert",
    "protjax.models.registry",
    "protjax.data.config",
    "protjax.data.pipeline",
    "protjax.partitioning",
    "protjax.optim",
    "protjax.checkpoints",
    "protjax.trainer",
    "tasks.pretraining",
)

_registered: set[str] = set()


def _modules() -> tuple[str, ...]:
  """MODULES and every registered family's model module (a new family needs no line here)."""
  from protjax.models import registry  # pylint: disable=import-outside-toplevel
  return tuple(dict.fromkeys(MODULES + tuple(f.model_module for f in registry.FAMILIES.values())))


def register_all() -> None:
  """Registers every module's GIN_CONFIGURABLES with gin (idempotent)."""
  for name in _modules():
    try:
      if importlib.util.find_spec(name) is None:
        continue
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      # Without TensorFlow/seqio only the seqio data backend (and its task
      # registry) is missing; DataConfig.backend = 'numpy' still runs.
      if e.name in ("tensorflow", "seqio"):
        continue
      raise
    for obj in getattr(module, "GIN_CONFIGURABLES", ()):
      key = f"{obj.__module__}.{obj.__qualname__}"
      if key in _registered:
        continue
      gin.external_configurable(obj, module="protjax")
      _registered.add(key)


def parse_gin(files=(), bindings=(), finalize: bool = True) -> None:
  """Registers configurables, then parses gin files and `NAME=value` bindings."""
  register_all()
  gin.parse_config_files_and_bindings(list(files), list(bindings),
                                      finalize_config=finalize)


def check_binding(binding: str) -> None:
  """Raises InputError naming a `NAME=value` binding that gin cannot parse."""
  name, _, value = (part.strip() for part in binding.partition("="))
  try:
    for _ in config_parser.ConfigParser(binding, gin.config.ParserDelegate(skip_unknown=True)):
      pass
  except (SyntaxError, ValueError, tokenize.TokenError):
    raise InputError(
        f"gin binding {binding!r}: {value!r} is not a gin value (a number, True, False, "
        "None, a list or tuple, @reference, %macro, or a quoted string: "
        f"--gin.{name}=\"'{value}'\")") from None


def _type_hints(obj) -> dict:
  """Parameter annotations of a configurable (a function or a dataclass), or
  {} where they cannot be resolved (nothing is checked then)."""
  try:
    return typing.get_type_hints(obj)
  except Exception:  # pylint: disable=broad-except
    return {}


def _fits(value, hint) -> bool:
  """Whether a gin value can be `hint`; annotations other than plain
  numbers, strings, booleans, None, sequences and mappings pass."""
  if isinstance(value, gin.config.ConfigurableReference) or hint is typing.Any:
    return True  # @references and %macros are resolved (and checked) by the callee
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_fits(value, h) for h in typing.get_args(hint))
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is str:
    return isinstance(value, str)
  if hint in (tuple, list) or origin in (tuple, list):
    return isinstance(value, (tuple, list))
  if origin is collections.abc.Sequence:
    return isinstance(value, (tuple, list, str))
  if hint is dict or origin in (dict, collections.abc.Mapping):
    return isinstance(value, dict)
  return True


def _type_name(hint) -> str:
  """`int`, `str or None`, ... for a message."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    return " or ".join(_type_name(h) for h in typing.get_args(hint))
  if hint is type(None):
    return "None"
  return getattr(hint, "__name__", None) or str(hint)


def check_types() -> None:
  """Raises InputError naming the first binding of the parsed configuration
  whose value contradicts its parameter's type annotation."""
  # gin has no public listing of every (scope, configurable) binding.
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    configurable = gin.config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
    if configurable is None:
      continue
    hints = _type_hints(configurable.wrapped)
    for param, value in params.items():
      if param in hints and not _fits(value, hints[param]):
        name = (f"{scope}/" if scope else "") + f"{selector.rsplit('.', 1)[-1]}.{param}"
        raise InputError(f"gin binding {name} = {value!r}: expected "
                         f"{_type_name(hints[param])}")
