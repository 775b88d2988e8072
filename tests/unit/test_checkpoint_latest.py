"""The checkpoint a resume starts from: `latest` when it names a complete one, else the
newest complete step (a crash between the rename and the pointer, or a broken pointer)."""

from __future__ import annotations

import logging

from aistack.model.checkpoint import LATEST, latest


def _step(root, step: int, complete: bool = True):
    path = root / f"step_{step:06d}"
    path.mkdir(parents=True)
    if complete:
        (path / "metadata.json").write_text("{}")
    return path


def test_latest_names_a_complete_checkpoint(tmp_path):
    _step(tmp_path, 5)
    ten = _step(tmp_path, 10)
    _step(tmp_path, 15)  # complete, newer, but not the one `latest` names (a rolled-back run)
    (tmp_path / LATEST).write_text("step_000010\n")
    assert latest(tmp_path) == ten


def test_a_broken_or_missing_pointer_falls_back_to_the_newest_complete_step(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="aistack")
    five = _step(tmp_path, 5)
    _step(tmp_path, 10, complete=False)  # died while writing
    (tmp_path / LATEST).write_text("step_000010\n")
    assert latest(tmp_path) == five
    assert "not a complete checkpoint" in caplog.text
    (tmp_path / LATEST).write_text("step_000042\n")  # names nothing
    assert latest(tmp_path) == five
    (tmp_path / LATEST).unlink()
    assert latest(tmp_path) == five
    assert latest(tmp_path / "nothing-here") is None
