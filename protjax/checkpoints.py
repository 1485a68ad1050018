"""Checkpoints (orbax): save every N steps asynchronously, resume, reshard.

Layout under `model_dir/checkpoints/<step>/`:
  params/     the parameter tree (orbax PyTree, one array per parameter)
  opt_state/  the optimiser state
  meta/       JSON: step, data seed, base RNG key (so the resumed run sees
              exactly the batches and dropout masks it would have seen)

Orbax writes each step into a temporary directory and renames it when every
item (and every host) is done, so an interrupted save never shows up as the
latest step. Restoring takes the target shardings, so a checkpoint written on
one mesh (8-way model parallel) restores on another (4-way).

`PreemptionGuard` turns SIGTERM (a TPU VM preemption notice) into a stop the
training loop checks every step: it saves at the step reached and stops
cleanly, on every host at the same step.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import signal
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When to save and what to keep.

  Attributes:
    save_every: save a checkpoint every this many steps (and at the end).
    keep: keep the last `keep` checkpoints ...
    keep_period: ... plus every step divisible by `keep_period` (None: none).
    async_save: write in a background thread while training continues.
  """
  save_every: int = 1000
  keep: int = 3
  keep_period: Optional[int] = None
  async_save: bool = True


def checkpoint_dir(model_dir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(model_dir) / CHECKPOINT_SUBDIR


class Checkpointer:
  """One model_dir's checkpoints: save, find the latest complete, restore."""

  def __init__(self, model_dir: str | os.PathLike,
               config: CheckpointConfig = CheckpointConfig(),
               read_only: bool = False):
    self.config = config
    self.directory = checkpoint_dir(model_dir).absolute()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else config.save_every,
        max_to_keep=config.keep,
        keep_period=config.keep_period,
        enable_async_checkpointing=config.async_save,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("params", "opt_state", "meta"),
        options=options)

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step (None when there is none)."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, params: Any, opt_state: Any, meta: dict,
           force: bool = False) -> bool:
    """Starts saving (async); returns whether a save was started.

    Without `force` the manager's policy (every `save_every` steps) decides.
    """
    return self.manager.save(
        step, force=force,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(dict(meta, step=int(step)))))

  def restore(self, abstract_params: Any, abstract_opt_state: Any,
              step: Optional[int] = None) -> tuple[Any, Any, dict]:
    """Restores (params, opt_state, meta) onto the given target shardings.

    Args:
      abstract_params, abstract_opt_state: trees of jax.ShapeDtypeStruct with
        `.sharding` set for the mesh the run has now.
      step: which step; default the latest complete one.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore()))
    return restored["params"], restored["opt_state"], dict(restored["meta"])

  def read_meta(self, step: Optional[int] = None) -> dict:
    """The JSON metadata of a checkpoint (step, data seed, RNG, data offset)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    restored = self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until any background save has been committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(model_dir: str | os.PathLike,
                   step: Optional[int] = None) -> dict:
  """The parameter tree of a checkpoint as host numpy arrays.

  For the export helper: needs no mesh, no model and no optimiser. Raises
  FileNotFoundError when `model_dir` holds no complete checkpoint.
  """
  directory = checkpoint_dir(model_dir).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoints directory in {model_dir}")
  if step is None:
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, save_interval_steps=0))
    step = manager.latest_step()
    manager.close()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
  path = directory / str(step) / "params"
  if not path.is_dir():
    raise FileNotFoundError(f"no parameters at {path}")
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", None) or getattr(
      metadata, "tree", metadata)
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(
      path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return jax.tree.map(np.asarray, restored)


class PreemptionGuard:
  """Turns SIGTERM or `request_stop` into a stop every host agrees on.

  One process: a Python SIGTERM handler notes the preemption; it is read
  every step.

  Several processes (`jax.distributed`): SIGTERM is left to jax's own
  preemption notifier, which tells every host through the coordination
  service and names a common step, `reached_preemption_sync_point`; that must
  be asked at every step, and is cheap. A Python handler would supersede the
  notifier, so only the signalled host would know until the next all-gather.
  `request_stop` (the wall-clock budget) is local; hosts fold it together
  with an all-gather, a device collective that drains the dispatch queue, so
  only on the steps the caller says (`gather`).
  """

  # A request is kept as 1 + its index (0: none), so that the larger wins,
  # here and in the all-gather: a preemption outranks the budget.
  REASONS = ("time_limit", "preempted")

  def __init__(self):
    self._code = 0
    self._installed = False
    self._previous_handler = None
    self._multihost = jax.process_count() > 1
    self._jax_notifier = (self._multihost
                          and jax.config.jax_enable_preemption_service)

  def __enter__(self) -> "PreemptionGuard":
    if (not self._jax_notifier
        and threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:  # None: set outside Python; the default is closest
      signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
      self._installed = False

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.request_stop("preempted")

  def request_stop(self, reason: str) -> None:
    """Asks this host to stop, for one of `REASONS`."""
    self._code = max(self._code, 1 + self.REASONS.index(reason))

  def stop_requested(self, step: int, gather: bool = True) -> Optional[str]:
    """Why to stop at `step` (the same on every host), or None to go on.

    Call at every step, with the same `gather` on every host.
    """
    code = self._code
    if self._multihost:
      from jax.experimental import multihost_utils
      if (self._jax_notifier
          and multihost_utils.reached_preemption_sync_point(step)):
        return "preempted"
      if not gather:
        return None
      code = int(np.max(multihost_utils.process_allgather(np.int32(code))))
    return self.REASONS[code - 1] if code else None


GIN_CONFIGURABLES = (CheckpointConfig,)
