"""Before anything is submitted, a job in an OCI container is checked against what its
runtime refuses and what it mounts: a recipe path outside the mounts is a RecipeError
naming the key and the value, not a FileNotFoundError in a job minutes later."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.launch import launcher
from aistack.recipe import RecipeError

REPO = Path(__file__).resolve().parents[2]
FINEWEB = REPO / "recipes" / "data" / "fineweb.yaml"
OCI = REPO / "tests" / "data" / "cluster-oci.yaml"      # container_runtime: oci, mounts /lustre
PYXIS = REPO / "tests" / "data" / "cluster-pyxis.yaml"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A crawl folder, a bundle, and a launch that records whether any stage was submitted."""
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "a.warc.gz").write_bytes(b"")
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    submitted = []
    real = launcher.submit_stages
    monkeypatch.setattr(launcher, "submit_stages", lambda pipeline, *a, **k: submitted.append(pipeline) or real(pipeline, *a, **k))
    base = [f"output.root={tmp_path / 'runs'}", f"resources.container.image={bundle}",
            # the recipe's own blocklist lies beside it: mounted, so only the input is in question
            f"resources.container.mounts=['{REPO / 'recipes'}:{REPO / 'recipes'}:ro']"]
    return crawl, bundle, base, submitted


def launch(recipe: Path, overrides: list[str], profile: Path = OCI):
    return launcher.launch(recipe, overrides, on=str(profile), dry_run=True)


@pytest.mark.parametrize("pattern", ["{crawl}", "{crawl}/*.warc.gz"])
def test_an_input_outside_the_mounts_is_refused_before_anything_is_submitted(site, pattern):
    crawl, _, base, submitted = site
    value = pattern.format(crawl=crawl)
    with pytest.raises(RecipeError) as err:
        launch(FINEWEB, [*base, f"filter.input.paths=['{value}']"])
    message = str(err.value)
    assert f"key 'filter.input.paths[0]' = '{value}'" in message and "resources.container.mounts" in message
    assert submitted == []


def test_a_mounted_input_or_one_in_the_image_runs(site):
    crawl, bundle, base, submitted = site
    mounted = [*base[:2], f"resources.container.mounts=['{REPO / 'recipes'}:{REPO / 'recipes'}:ro', '{crawl}:{crawl}:ro']"]
    assert launch(FINEWEB, [*mounted, f"filter.input.paths=['{crawl}']"]).submitted
    (bundle / "rootfs" / str(crawl).lstrip("/")).mkdir(parents=True)  # the image has the folder itself
    assert launch(FINEWEB, [*base, f"filter.input.paths=['{crawl}']"]).submitted
    assert len(submitted) == 2


def test_pyxis_sites_mount_by_their_own_configuration_so_paths_are_not_checked(site):
    crawl, _, base, _ = site
    overrides = [base[0], "resources.container.image=nvcr.io#nvidia/pytorch:25.01-py3", f"filter.input.paths=['{crawl}']"]
    assert launch(FINEWEB, overrides, PYXIS).submitted


def test_a_later_stage_the_runtime_refuses_stops_the_pipeline_before_its_first_stage(site, tmp_path):
    _, bundle, _, submitted = site
    pipeline = tmp_path / "two.yaml"
    pipeline.write_text(f"""
kind: pipeline
name: two
output: {{root: {tmp_path / 'runs'}}}
resources: {{container: {{image: {bundle}}}}}
report: false
stages:
  first: {{recipe: {REPO / 'recipes' / 'examples' / 'smoke.yaml'}}}
  second:
    recipe: {REPO / 'recipes' / 'examples' / 'smoke.yaml'}
    after: [first]
    overrides: {{resources.tasks_per_node: 2}}
""")
    with pytest.raises(RecipeError) as err:
        launch(pipeline, [])
    assert "stage second" in str(err.value) and "key 'resources.tasks_per_node' = 2" in str(err.value)
    assert submitted == []


def test_a_path_that_steps_out_of_a_mount_with_dotdot_is_outside_it(site):
    crawl, _, base, submitted = site
    # mounted: the crawl's parent's sibling "mnt"; the input climbs out of it to the crawl
    mnt = crawl.parent / "mnt"
    mnt.mkdir()
    climbing = f"{mnt}/../crawl"
    mounted = [*base[:2], f"resources.container.mounts=['{REPO / 'recipes'}:{REPO / 'recipes'}:ro', '{mnt}:{mnt}:ro']"]
    with pytest.raises(RecipeError, match=r"key 'filter.input.paths\[0\]'"):
        launch(FINEWEB, [*mounted, f"filter.input.paths=['{climbing}']"])
    assert submitted == []
