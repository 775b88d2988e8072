"""`make gpu-check` without a GPU, the wheels it brings to the GPU machine, the device table.
The GPU run itself is not tested here (tests/test_gpu_check_cpu.py runs it on the CPU)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_check_env as env  # noqa: E402


def no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, cwd=REPO, **kwargs)


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_without_a_gpu_the_script_stops_at_once_and_names_what_it_needs(tmp_path):
    result = run(sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"))
    assert result.returncode == env.NO_GPU_EXIT == 3, result.stderr
    message = result.stderr
    assert "needs one NVIDIA GPU visible to PyTorch with CUDA" in message
    import torch

    assert f"torch {torch.__version__} is a CPU build (no CUDA)" in message, "says why, here"
    assert "make gpu-wheels" in message and "make gpu-check" in message and "--cpu --tiny" in message
    assert not (tmp_path / "out").exists(), "nothing was run or written"


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_make_gpu_check_stops_before_installing_anything(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    (wheels / "fake-1.0-py3-none-any.whl").write_bytes(b"not a wheel")  # would fail to install
    result = run("make", "--no-print-directory", "gpu-check", f"PYTHON={sys.executable}", f"GPU_WHEELS={wheels}",
                 f"GPU_SITE={site}")
    assert result.returncode != 0
    assert "needs one NVIDIA GPU" in result.stderr and "Error 3" in result.stderr
    assert not site.exists(), "the wheels are installed only on a machine with a GPU"


def test_wheel_specs_are_the_versions_this_venv_runs():
    result = run(sys.executable, str(SCRIPT), "--wheel-specs")
    assert result.returncode == 0, result.stderr
    specs = dict(line.split("==") for line in result.stdout.split())
    assert sorted(specs) == sorted(env.WHEELS)
    for name, version in specs.items():
        assert version == importlib.metadata.version(name)
    pinned = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    assert specs["megatron-core"] == pinned["megatron-core"]
    assert "torch" not in specs and "wandb" not in specs and "lm-eval" not in specs, "the image has torch; the check needs no W&B/lm-eval"


def test_each_wheel_finds_its_requirements_in_the_image_or_the_wheels():
    assert env.wheel_problems() == []
    without_core = tuple(w for w in env.WHEELS if w != "pydantic-core")
    assert env.wheel_problems(without_core) == [
        "wheel pydantic requires pydantic-core, which is neither in the GPU image nor in the wheel list"]


def test_every_module_of_the_check_path_imports_with_only_the_image_and_the_wheels():
    # A fresh process that hides every installed package the GPU image lacks (wandb, lm_eval,
    # datatrove, zarr, ...), then imports the check path, lazily imported modules included.
    result = run(sys.executable, str(SCRIPT), "--simulate-image", "--check-imports")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "modules of the check path import" in result.stdout


def test_a_module_missing_from_the_wheels_is_named():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_check_env as e; "
            "hidden = e.simulate_image(tuple(w for w in e.WHEELS if w != 'submitit')); "
            "print(hidden.get('submitit')); print(e.import_problems(('submitit', 'aistack.launch.slurm.executor')))")
    result = run(sys.executable, "-c", code)
    lines = result.stdout.splitlines()
    assert lines[0] == "submitit", result.stderr
    assert "submitit: ModuleNotFoundError: No module named 'submitit'" in lines[1]
    assert "aistack.launch.slurm.executor: ModuleNotFoundError: No module named 'submitit'" in lines[1], "found through aistack too"


def test_aistack_shim_maps_jobs_like_pyproject(tmp_path):
    shim = env.aistack_shim(REPO, tmp_path / "src")
    env.aistack_shim(REPO, tmp_path / "src")  # made again: replaced, not an error
    # -S: no site-packages, so not the editable install of this venv
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import aistack, aistack.jobs, aistack.hardware; "
            "print(aistack.__file__); print(aistack.jobs.__file__)")
    result = run(sys.executable, "-S", "-c", code, str(shim))
    assert result.returncode == 0, result.stderr
    package, jobs = result.stdout.split()
    assert package == str(shim / "aistack" / "__init__.py")
    assert Path(jobs).resolve() == REPO / "jobs" / "__init__.py"
    assert not (shim / "aistack" / "__pycache__").exists()


def test_a_failing_section_is_recorded_and_the_others_run(tmp_path, monkeypatch, capsys):
    def broken(check):
        raise RuntimeError("no such thing")

    def failing_check(check):
        return [gpu_check.check_row("b", "resume", "5/6 equal", "bit-exact", False), gpu_check.Row("b", "x", "1")]

    def fine(check):
        check.found["x"] = 1
        return [gpu_check.Row("c", "figure", "42")]

    monkeypatch.setattr(gpu_check, "SECTIONS", [("a", broken), ("b", failing_check), ("c", fine)])
    check = gpu_check.Check(out=tmp_path, sizes=gpu_check.TINY, gpu=False)
    gpu_check.run_sections(check)
    assert check.sections["a"]["ok"] is False and "RuntimeError: no such thing" in check.sections["a"]["error"]
    assert check.sections["b"]["ok"] is False and check.sections["b"]["error"] is None, "a check that does not hold fails its section"
    assert check.sections["c"]["ok"] is True and check.found["x"] == 1, "later sections still ran"
    text = gpu_check.table(check.rows)
    assert "ERROR" in text and "RuntimeError: no such thing" in text and "42" in text
    assert [r.met for r in check.rows] == [False, False, None, None]
    with pytest.raises(RuntimeError, match="needs run"):
        check.need("run")


def test_one_gpu_table_for_mfu_estimates_and_roofline(monkeypatch):
    import torch

    from aistack import hardware
    from aistack.bench import roofline
    from aistack.model import estimate

    h100 = hardware.lookup("NVIDIA H100 80GB HBM3")
    assert (h100.name, h100.tflops["bf16"], h100.hbm_bytes_per_s) == ("H100 SXM 80GB", 989.0, 3.35e12)
    assert hardware.lookup("NVIDIA H100 PCIe").tflops["bf16"] == 756.0, "the PCIe part is not the SXM one"
    assert hardware.lookup("NVIDIA H200").hbm_bytes_per_s == 4.8e12
    assert hardware.lookup(None, "gpu&h200").key == "H200", "a Slurm constraint"
    assert hardware.lookup("NVIDIA A10G") is None and hardware.lookup("A100-SXM4-80GB").fp8_flops is None
    assert estimate.DEVICES["H100"] is roofline.DEVICES["H100"] is h100
    assert estimate.device_for("h100") == "H100" and estimate.device_for("h100 pcie") == "H100 PCIe"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert roofline.device_spec() is hardware.current() is hardware.lookup("H200")
