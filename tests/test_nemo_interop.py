"""aistack and the real nemo-toolkit 2.7.3, both ways, on CPU (`make test-nemo`).

NeMo cannot live in aistack's environment (numpy<2, transformers 4.57): it runs from
.venv-nemo (nemo_interop/build-venv.sh) through nemo_interop/hf_to_nemo.py (NeMo's
`llm.import_ckpt`) and nemo_to_hf.py (NeMo's `llm.export_ckpt`). Without that environment
these tests are skipped; tests/test_nemo.py covers aistack's side on a checkpoint NeMo wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aistack.model.export_hf  # noqa: F401  (transformers before megatron's CPU shims)
from test_nemo import aistack_logits, tiny_llama_run, transformers_logits

ROOT = Path(__file__).resolve().parents[1]
NEMO_PYTHON = ROOT / ".venv-nemo" / "bin" / "python"
pytestmark = pytest.mark.skipif(not NEMO_PYTHON.exists(), reason="no .venv-nemo: `make test-nemo` builds it")


def nemo(script: str, src: Path, out: Path) -> dict:
    done = subprocess.run([str(NEMO_PYTHON), str(ROOT / "nemo_interop" / script), str(src), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def aistack(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "aistack.cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return tiny_llama_run(tmp_path_factory.mktemp("nemo-interop"), steps=3)


def test_nemo_imports_aistacks_hf_export_and_aistack_reads_nemos_checkpoint(trained, tmp_path):
    """aistack -> HF -> NeMo's import_ckpt -> aistack: the logits of the run's own checkpoint."""
    aistack("export", str(trained), "--to", "hf", "--out", str(tmp_path / "hf"))
    done = nemo("hf_to_nemo.py", tmp_path / "hf", tmp_path / "nemo")
    assert done["api"] == "nemo.collections.llm.import_ckpt" and done["nemo"].startswith("2.7")
    expected = transformers_logits(tmp_path / "hf")[..., :256]
    torch.testing.assert_close(aistack_logits(tmp_path / "nemo"), expected, atol=1e-5, rtol=1e-5)


def test_nemo_exports_aistacks_nemo_checkpoint_to_transformers_with_the_same_logits(trained, tmp_path):
    """aistack --to nemo -> NeMo's export_ckpt (reads io.json, weights/) -> transformers."""
    aistack("export", str(trained), "--to", "nemo", "--out", str(tmp_path / "nemo"))
    done = nemo("nemo_to_hf.py", tmp_path / "nemo", tmp_path / "hf")
    assert done["api"] == "nemo.collections.llm.export_ckpt" and done["architecture"] == "LlamaForCausalLM"
    expected = aistack_logits(tmp_path / "nemo")
    assert expected.std() > 0.1
    torch.testing.assert_close(transformers_logits(tmp_path / "hf")[..., :256].float(), expected, atol=1e-5, rtol=1e-5)
