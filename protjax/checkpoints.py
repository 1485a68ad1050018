"""Checkpoints (orbax): save every N steps asynchronously, resume, reshard.

Layout under `model_dir/checkpoints/<step>/`:
  params/     the parameter tree (orbax PyTree, one array per parameter)
  opt_state/  the optimiser state
  meta/       JSON: step, data seed, base RNG key (so the resumed run sees
              exactly the batches and dropout masks it would have seen)
  model_state/  a stateful family's recurrent state (ProtTXL's memory; see
              `protjax.trainer`), only for those families

Orbax writes each step into a temporary directory and renames it when every
item (and every host) is done, so an interrupted save never shows up as the
latest step. Restoring takes the target shardings, so a checkpoint written on
one mesh (8-way model parallel) restores on another (4-way).

A step whose files were damaged afterwards (a truncated array file, a
deleted `manifest.ocdbt`) is "unreadable": `Checkpointer.restore_newest`
(the trainer's resume) warns once naming it, resumes from the newest step
that restores, and moves the bad one aside to `<step>.unreadable` (kept for
inspection, out of the way of the steps this run saves again);
`restore_params` (export, embed) raises an InputError naming it, and
`restore_newest_params` falls back as the trainer does, without moving
anything.

`PreemptionGuard` turns SIGTERM (a TPU VM preemption notice) into a stop the
training loop checks every step: it saves at the step reached and stops
cleanly, on every host at the same step.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import pathlib
import signal
import sys
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from protjax import files
from protjax.errors import InputError

CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUFFIX = ".unreadable"
ITEMS = ("params", "opt_state", "meta")
MODEL_STATE = "model_state"


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


def checkpoint_dir(model_dir: str | os.PathLike) -> epath.Path:
  """model_dir/checkpoints, absolute as orbax wants it; a gs:// model_dir stays
  a URL (pathlib would make `gs://b` the local `gs:/b`)."""
  if files.is_url(model_dir):
    return epath.Path(model_dir) / CHECKPOINT_SUBDIR
  return epath.Path(os.path.abspath(os.fspath(model_dir))) / CHECKPOINT_SUBDIR


class _ClosedLoopTolerant(asyncio.SelectorEventLoop):
  """An event loop that drops callbacks scheduled after it closed.

  orbax reads a checkpoint in a fresh loop and closes it as soon as one read
  fails (a truncated file); TensorStore reads still in flight then schedule
  their completion on the closed loop from their own threads, and each
  prints a 'RuntimeError: Event loop is closed' traceback. The reads that
  failed but were never awaited report 'Task exception was never retrieved'
  whenever the garbage collector gets to them, often after the restore has
  returned; the restore's own error already says what failed, so those
  reports are dropped.
  """

  def call_soon_threadsafe(self, callback, *args, context=None):
    if self.is_closed():
      return None
    return super().call_soon_threadsafe(callback, *args, context=context)

  def call_exception_handler(self, context):
    if "exception was never retrieved" in context.get("message", ""):
      return
    super().call_exception_handler(context)


class _TolerantLoopPolicy(asyncio.DefaultEventLoopPolicy):
  def new_event_loop(self):
    return _ClosedLoopTolerant()


@contextlib.contextmanager
def _quiet_orbax():
  """Reading with orbax: its absl warnings about read-only managers and
  item folders without step metadata describe how protjax reads, not a
  problem; a failed read does not print tracebacks from TensorStore threads
  (`_ClosedLoopTolerant`)."""
  logger = logging.getLogger("absl")
  level = logger.level
  policy = asyncio.get_event_loop_policy()
  hook = sys.unraisablehook
  logger.setLevel(logging.ERROR)
  asyncio.set_event_loop_policy(_TolerantLoopPolicy())
  sys.unraisablehook = _drop_orbax_coroutines(hook)
  try:
    yield
  finally:
    # The reads a failed restore left behind are collected here, while their
    # 'Exception ignored in: <coroutine ...>' reports are still dropped.
    gc.collect()
    sys.unraisablehook = hook
    asyncio.set_event_loop_policy(policy)
    logger.setLevel(level)


def _drop_orbax_coroutines(hook):
  """An unraisable-exception hook that drops orbax's abandoned read coroutines
  (a failed restore closes its loop with other reads in flight; each one's
  error surfaces when the coroutine is collected) and passes on the rest."""
  def drop(unraisable):
    obj = unraisable.object
    if asyncio.iscoroutine(obj) and "orbax" in getattr(obj, "__qualname__", "") + str(
        getattr(getattr(obj, "cr_code", None), "co_filename", "")):
      return
    hook(unraisable)
  return drop


def missing_file(step_dir: pathlib.Path, items: tuple[str, ...] = ITEMS) -> Optional[str]:
  """What is missing from a step's folder (an item's folder, or the
  manifest of an OCDBT item), or None. Checked before orbax reads: without
  its manifest, orbax fails on a tree mismatch, and TensorStore callbacks
  then print 'Event loop is closed' tracebacks."""
  for item in items:
    item_dir = step_dir / item
    if not item_dir.is_dir():
      return f"{item}/ is missing"
    if (any(item_dir.glob("ocdbt.process_*"))
        and not (item_dir / "manifest.ocdbt").is_file()):
      return f"{item}/manifest.ocdbt is missing"
  return None


class _MissingFile(Exception):
  """A step lacks a file (`missing_file`); raised before orbax reads it."""


def _check_files(step_dir: pathlib.Path, items: tuple[str, ...] = ITEMS) -> None:
  missing = missing_file(step_dir, items)
  if missing:
    raise _MissingFile(missing)


def why_unreadable(error: BaseException) -> str:
  """A short reason a step did not restore: the first line of the innermost
  error (orbax wraps TensorStore's, which names the file and the byte range)."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  line = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
  return line if len(line) <= 300 else line[:297] + "..."


class Checkpointer:
  """One model_dir's checkpoints: save, find the latest complete, restore."""

  def __init__(self, model_dir: str | os.PathLike,
               config: CheckpointConfig = CheckpointConfig(),
               read_only: bool = False):
    self.config = config
    self.directory = checkpoint_dir(model_dir)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else config.save_every,
        max_to_keep=config.keep,
        keep_period=config.keep_period,
        enable_async_checkpointing=config.async_save,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=ITEMS + (MODEL_STATE,),
        options=options)

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step (None when there is none)."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, params: Any, opt_state: Any, meta: dict,
           force: bool = False, model_state: Any = None) -> bool:
    """Starts saving (async); returns whether a save was started.

    Without `force` the manager's policy (every `save_every` steps) decides.
    `model_state`: a stateful family's state, saved as item `model_state`.
    """
    items = dict(params=ocp.args.StandardSave(params),
                 opt_state=ocp.args.StandardSave(opt_state),
                 meta=ocp.args.JsonSave(dict(meta, step=int(step))))
    if model_state is not None:
      items[MODEL_STATE] = ocp.args.StandardSave(model_state)
    return self.manager.save(step, force=force, args=ocp.args.Composite(**items))

  def restore(self, abstract_params: Any, abstract_opt_state: Any,
              step: Optional[int] = None, *, abstract_model_state: Any = None
              ) -> tuple[Any, Any, dict]:
    """Restores (params, opt_state, meta) onto the given target shardings.

    Args:
      abstract_params, abstract_opt_state: trees of jax.ShapeDtypeStruct with
        `.sharding` set for the mesh the run has now.
      step: which step; default the latest complete one.
      abstract_model_state: a stateful family's state (as the others); it is
        restored into `meta["model_state"]`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    items = dict(params=ocp.args.StandardRestore(abstract_params),
                 opt_state=ocp.args.StandardRestore(abstract_opt_state),
                 meta=ocp.args.JsonRestore())
    if abstract_model_state is not None:
      items[MODEL_STATE] = ocp.args.StandardRestore(abstract_model_state)
    with _quiet_orbax():
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    meta = dict(restored["meta"])
    if abstract_model_state is not None:
      meta[MODEL_STATE] = restored[MODEL_STATE]
    return restored["params"], restored["opt_state"], meta

  def restore_newest(self, abstract_params: Any, abstract_opt_state: Any, *,
                     set_aside: bool = False, abstract_model_state: Any = None
                     ) -> tuple[int, Any, Any, dict]:
    """Restores the newest step that reads: (step, params, opt_state, meta).

    Each newer step that does not restore gets one warning naming it; with
    `set_aside` (a run resuming in its own model_dir), once an older step
    has restored, those are renamed `<step>.unreadable`, so that this run
    can save those step numbers again. When no step restores, nothing is
    renamed (the cause may be the model, not the files): InputError naming
    the steps and why.
    """
    failed: list[tuple[int, str]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        _check_files(self.directory / str(step), ITEMS + (
            (MODEL_STATE,) if abstract_model_state is not None else ()))
        params, opt_state, meta = self.restore(abstract_params, abstract_opt_state, step,
                                               abstract_model_state=abstract_model_state)
      except Exception as e:  # pylint: disable=broad-except
        # orbax and TensorStore raise ValueError, OSError, KeyError, ...
        failed.append((step, why_unreadable(e)))
        continue
      for bad, why in failed:
        moved = self._set_aside(bad) if set_aside else None
        logging.warning("checkpoint step %d in %s is unreadable (%s); resuming from step "
                        "%d%s", bad, self.directory, why, step,
                        f"; moved to {moved} for inspection" if moved else "")
      return step, params, opt_state, meta
    raise InputError("no checkpoint restores: " + "; ".join(
        f"step {s}: {why}" for s, why in failed), path=str(self.directory))

  def _set_aside(self, step: int) -> Optional[pathlib.Path]:
    """Renames step `step` to `<step>.unreadable` (process 0; orbax lists
    only step-number folders; every host then sees it gone); returns the
    new path."""
    target = self.directory / f"{step}{UNREADABLE_SUFFIX}"
    if jax.process_index() == 0:
      (self.directory / str(step)).replace(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"protjax set aside step {step}")
    self.manager.reload()
    return target

  def read_meta(self, step: Optional[int] = None) -> dict:
    """The JSON metadata of a checkpoint (step, data seed, RNG, data offset)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    with _quiet_orbax():
      restored = self.manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until any background save has been committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def complete_steps(model_dir: str | os.PathLike) -> list[int]:
  """The complete checkpoint steps of a run, oldest first (reads nothing
  but the folder). FileNotFoundError when there is no checkpoints folder."""
  directory = checkpoint_dir(model_dir)
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoints directory in {model_dir}")
  with _quiet_orbax():
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, save_interval_steps=0))
    steps = sorted(manager.all_steps())
    manager.close()
  return steps


def _read_params(path: pathlib.Path) -> dict:
  """One step's parameter tree as host numpy arrays (orbax errors as they come)."""
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", None) or getattr(
      metadata, "tree", metadata)
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(
      path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return jax.tree.map(np.asarray, restored)


def restore_params(model_dir: str | os.PathLike,
                   step: Optional[int] = None) -> dict:
  """The parameter tree of a checkpoint (default: the latest) as host numpy
  arrays.

  For export and embed: needs no mesh, no model and no optimiser. Raises
  FileNotFoundError when `model_dir` holds no complete checkpoint (or no
  `step`), and InputError naming the step when its files do not restore.
  """
  directory = checkpoint_dir(model_dir)
  steps = complete_steps(model_dir)
  if step is None:
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    step = steps[-1]
  path = directory / str(step) / "params"
  if not path.is_dir():
    raise FileNotFoundError(f"no parameters at {path}")
  try:
    _check_files(directory / str(step), ("params",))
    with _quiet_orbax():
      return _read_params(path)
  except Exception as e:  # pylint: disable=broad-except
    # orbax and TensorStore raise ValueError, OSError, KeyError, ...
    older = [s for s in steps if s < step]
    hint = f"; earlier steps: {', '.join(map(str, older))}" if older else ""
    raise InputError(f"checkpoint step {step} is unreadable ({why_unreadable(e)}){hint}",
                     path=str(directory)) from None


def restore_newest_params(model_dir: str | os.PathLike) -> tuple[int, dict]:
  """(step, parameter tree) of the newest checkpoint whose parameters
  restore, as host numpy arrays; one warning per newer step that does not
  (nothing is moved). FileNotFoundError when there is no complete
  checkpoint, InputError naming every step when none restores."""
  directory = checkpoint_dir(model_dir)
  steps = complete_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint in {directory}")
  failed = []
  for step in reversed(steps):
    try:
      params = restore_params(model_dir, step)
    except InputError as e:
      failed.append((step, e.problem))
      continue
    for _, problem in failed:
      logging.warning("%s: %s; using step %d", directory, problem, step)
    return step, params
  raise InputError("no checkpoint restores: " + "; ".join(p for _, p in failed),
                   path=str(directory))


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
