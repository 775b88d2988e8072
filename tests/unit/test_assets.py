"""Shipped files (blocklists, bad-words lists, local lm-eval tasks) are found through one place."""

from __future__ import annotations

import pytest

from conftest import RECIPES


def test_recipes_folder_is_the_source_tree_or_the_env_override(tmp_path, monkeypatch):
    from aistack.assets import shipped
    from aistack.eval.tasks import project_tasks
    from aistack.kinds.data import BadWordsCfg, UrlFilterCfg

    monkeypatch.delenv("AISTACK_RECIPES", raising=False)
    assert shipped("data", "badwords", "en.txt") == RECIPES / "data" / "badwords" / "en.txt"
    assert project_tasks() == RECIPES / "eval" / "tasks"
    (tmp_path / "data" / "blocklists").mkdir(parents=True)
    (tmp_path / "data" / "blocklists" / "default.txt").write_text("word spam\n")
    monkeypatch.setenv("AISTACK_RECIPES", str(tmp_path))
    assert UrlFilterCfg().blocklists == [str(tmp_path / "data" / "blocklists" / "default.txt")]
    with pytest.raises(ValueError, match="a bad-words list for 'en'"):
        BadWordsCfg(enabled=True)
    assert BadWordsCfg().lists == {"en": "default"}, "a disabled filter reads no list"
    monkeypatch.delenv("AISTACK_RECIPES")
    assert BadWordsCfg(enabled=True).lists == {"en": str(RECIPES / "data" / "badwords" / "en.txt")}
