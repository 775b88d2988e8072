"""An lm-eval task folder is data: one that would make lm-eval import Python (`.py` files,
`!function` in its YAML) is refused unless the recipe allows code for that folder."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aistack.eval.tasks import code_in, task_manager
from aistack.kinds.evaluate import EvaluateConfig


def _folder(tmp_path, name: str, with_code: bool):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "t.yaml").write_text("task: t\ndataset_path: json\n" + ("process_docs: !function utils.process_docs\n" if with_code else ""))
    if with_code:
        (folder / "utils.py").write_text("import os\nos.system('touch ran')\n")
    return folder


def test_code_in_a_task_folder_is_found(tmp_path):
    assert code_in(_folder(tmp_path, "plain", False)) == []
    found = code_in(_folder(tmp_path, "code", True))
    assert any(f.endswith("utils.py (Python)") for f in found) and any(f.endswith("t.yaml (!function)") for f in found)


def test_a_recipe_names_a_folder_with_code_only_with_allow_code(tmp_path):
    code = _folder(tmp_path, "code", True)
    plain = _folder(tmp_path, "plain", False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "metadata.json").write_text("{}")  # a checkpoint given directly
    base = {"checkpoints": [str(ckpt)], "tasks": ["t"]}
    with pytest.raises(ValidationError, match=r"task_paths[\s\S]*utils\.py \(Python\)[\s\S]*allow_code: true"):
        EvaluateConfig.model_validate({**base, "task_paths": [str(code)]})
    with pytest.raises(ValidationError, match="task_paths"):
        EvaluateConfig.model_validate({**base, "task_paths": [{"path": str(code), "allow_code": False}]})
    cfg = EvaluateConfig.model_validate({**base, "task_paths": [str(plain), {"path": str(code), "allow_code": True}]})
    assert cfg.task_folders == [str(plain), str(code)] and cfg.code_allowed == [str(code)]


def test_the_node_refuses_a_folder_that_gained_code_after_the_plan(tmp_path):
    code = _folder(tmp_path, "code", True)
    with pytest.raises(PermissionError, match="utils.py"):
        task_manager([code], tmp_path / "work", ["t"])
