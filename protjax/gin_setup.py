"""Gin stays at the edge: library modules never import gin.

A module that wants configurables exposed lists them in a module-level tuple
`GIN_CONFIGURABLES`; `register_all()` (called by entry points and tests before
parsing gin files) registers each one under the `protjax` module name, once.
Gin files then bind e.g. `T5Config.d_model = 1024`.
"""
from __future__ import annotations

import importlib
import importlib.util

import gin

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


def register_all() -> None:
  """Registers every module's GIN_CONFIGURABLES with gin (idempotent)."""
  for name in MODULES:
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
