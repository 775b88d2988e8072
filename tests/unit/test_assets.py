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


def test_a_wheel_installs_every_file_of_the_recipes_folder():
    # An installed aistack (the OCI image installs a wheel) reads its assets from
    # <prefix>/share/aistack/recipes: pyproject's data-files must cover all of recipes/.
    import tomllib
    from fnmatch import fnmatch

    data_files = tomllib.loads((RECIPES.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    for target, patterns in data_files.items():
        assert all(target == "share/aistack/" + pattern.rsplit("/", 1)[0] for pattern in patterns), target
    globs = [pattern.rsplit("/", 1) for patterns in data_files.values() for pattern in patterns]
    files = [p.relative_to(RECIPES.parent).as_posix() for p in RECIPES.rglob("*") if p.is_file()]
    missing = [f for f in files if not any(f.rsplit("/", 1)[0] == folder and fnmatch(f.rsplit("/", 1)[1], name)
                                          for folder, name in globs)]
    assert files and not missing, f"add to [tool.setuptools.data-files] in pyproject.toml: {missing}"
