"""protjax.files.write_text_atomic: whole file or the old one, never a torn one."""
import os

import pytest

from protjax import files
from protjax.errors import InputError


def test_replaces_content_with_shareable_permissions(tmp_path):
  path = tmp_path / "report.json"
  path.write_text("old")
  umask = os.umask(0o022)
  try:
    files.write_text_atomic(path, "new")
  finally:
    os.umask(umask)
  assert path.read_text() == "new"
  assert (path.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
  assert os.listdir(tmp_path) == ["report.json"]


def test_failed_rename_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
  path = tmp_path / "config.gin"
  path.write_text("old")

  def fail(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError, match="disk full"):
    files.write_text_atomic(path, "new")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["config.gin"]


def test_missing_folder_is_a_one_line_input_error(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(InputError, match="output folder does not exist") as e:
    files.write_text_atomic(missing / "out.md", "x")
  assert str(missing) in str(e.value)
  assert not missing.exists()
