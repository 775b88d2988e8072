"""Rendering: the sbatch scripts `--dry-run` prints are submitit's own, checked against expected files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aistack.launch import launcher
from aistack.recipe import RecipeError
from conftest import REPO

DATA = REPO / "tests" / "data"
EXPECTED = REPO / "tests" / "expected"
BIG = DATA / "smoke-128x8.yaml"


def dry_run(profile: str, recipe: Path = BIG, overrides=()):
    return launcher.launch(recipe, list(overrides), on=str(DATA / profile), dry_run=True)


@pytest.mark.parametrize(("recipe", "profile"), [
    ("smoke-128x8.yaml", "cluster-pyxis.yaml"),
    ("smoke-128x8.yaml", "cluster-apptainer.yaml"),
    ("smoke-oci.yaml", "cluster-oci.yaml"),  # Slurm's own OCI support: one task per node
])
def test_dry_run_matches_expected_sbatch(recipe, profile):
    result = dry_run(profile, DATA / recipe)
    scripts: dict[str, str] = {}
    for item in result.submitted:  # the first array of each job
        scripts.setdefault(item.job, item.sbatch)
    for job in ("map", "reduce"):
        expected_file = EXPECTED / f"{Path(recipe).stem}.{Path(profile).stem}.{job}.sbatch"
        if os.environ.get("AISTACK_REGENERATE_EXPECTED"):
            expected_file.write_text(scripts[job])
            continue
        assert scripts[job] == expected_file.read_text(), f"{expected_file} differs from the rendered script"
    if os.environ.get("AISTACK_REGENERATE_EXPECTED"):
        pytest.skip("expected files regenerated: review their diff, then run again without AISTACK_REGENERATE_EXPECTED")


def test_big_array_is_split_at_max_array_size():
    result = dry_run("cluster-pyxis.yaml")
    maps = [s for s in result.submitted if s.job == "map"]
    assert [len(s.task_ids) for s in maps] == [1001, 1001, 998]
    assert sorted(t for s in maps for t in s.task_ids) == list(range(3000))
    # array_parallelism (64) holds for the whole job: the three arrays share it
    assert "#SBATCH --array=0-1000%22" in maps[0].sbatch
    assert "#SBATCH --array=0-997%21" in maps[2].sbatch
    reduce_script = next(s.sbatch for s in result.submitted if s.job == "reduce")
    # the reduce job waits for all three arrays
    assert all(f"{s.job_id}" in reduce_script for s in maps)


def test_pyxis_and_apptainer_carry_image_mounts_and_gpu_flags():
    pyxis = dry_run("cluster-pyxis.yaml").submitted[0].sbatch
    assert "'--container-image=nvcr.io#nvidia/pytorch:25.01-py3'" in pyxis
    assert "--container-mounts=/lustre:/lustre,/data/warc:/data/warc:ro" in pyxis
    assert "#SBATCH --nodes=128" in pyxis and "#SBATCH --gpus-per-node=8" in pyxis
    assert "#SBATCH --ntasks-per-node=8" in pyxis and "#SBATCH --exclusive" in pyxis
    apptainer = dry_run("cluster-apptainer.yaml").submitted[0].sbatch
    assert "apptainer exec --nv --bind /lustre:/lustre,/data/warc:/data/warc:ro 'nvcr.io#nvidia/pytorch:25.01-py3' python -u -m aistack.runtime.node" in apptainer
    assert "--container-image" not in apptainer


def test_oci_runs_the_step_in_the_bundle_and_passes_mounts_to_the_node_runtime():
    oci = dry_run("cluster-oci.yaml", DATA / "smoke-oci.yaml", ["output.root=/scratch/runs"]).submitted[0].sbatch
    assert "--container=/lustre/images/aistack-oci /opt/aistack/venv/bin/python -u -m aistack.runtime.node" in oci
    # the run root lies outside the profile's mounts: it is mounted at the same path
    assert "export AISTACK_CONTAINER_MOUNTS=/lustre:/lustre,/data/warc:/data/warc:ro,/scratch/runs:/scratch/runs\n" in oci
    assert "export AISTACK_CONTAINER_WORKDIR=/lustre/work\n" in oci
    assert "--container-image" not in oci and "apptainer" not in oci


@pytest.mark.parametrize(("override", "key"), [
    ("resources.container.image=images/aistack-oci", "resources.container.image"),  # relative
    ("resources.container.image=registry.example.com#aistack:0.1.0", "resources.container.image"),  # not a bundle
    ("resources.container.image=/lustre/../etc", "resources.container.image"),
    ("resources.tasks_per_node=2", "resources.tasks_per_node"),  # Slurm 22.05: one task per node
])
def test_oci_refuses_what_slurm_cannot_run(override, key):
    with pytest.raises(RecipeError, match=f"key '{re.escape(key)}'"):
        dry_run("cluster-oci.yaml", DATA / "smoke-oci.yaml", [override])


HEAVY = ("torch", "megatron", "datatrove", "lm_eval", "wandb", "transformers", "pandas")
# The dry run, then what it imported of the heavy libraries (each costs seconds on a login node).
DRY_RUN = """import sys
from aistack.cli import main
code = main(sys.argv[1:])
print("heavy imports:", sorted(m for m in {heavy!r} if m in sys.modules))
sys.exit(code)
"""


def test_dry_run_cli_prints_script_fast_and_submits_nothing(tmp_path):
    # Fast: it imports none of the heavy libraries (a property, not a timing: the speed itself is
    # a benchmark's to measure, not a test's on a loaded machine).
    out = subprocess.run(
        [sys.executable, "-c", DRY_RUN.format(heavy=HEAVY), "run", str(BIG), "--on", str(DATA / "cluster-pyxis.yaml"), "--dry-run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --nodes=128" in out.stdout and "nothing was submitted" in out.stdout
    assert not Path("/lustre/runs").exists() and not (tmp_path / "runs").exists()
    assert "heavy imports: []" in out.stdout, out.stdout[-300:]
