"""Before anything is submitted: what a job in a container would refuse or not find.

Every job of every stage is rendered against the profile's container runtime once, so a
setting the runtime refuses (Slurm's OCI support runs one task per node) stops the launch
before the first stage is queued, not when a later stage is.

Slurm's OCI support (container_runtime: oci) mounts only what aistack lists (the profile's
container_mounts, the recipe's resources.container.mounts, the run root) besides the site's
oci.conf mounts: a file the recipe names outside them exists on the login node but not in
the job, which would fail minutes later with FileNotFoundError. pyxis and apptainer sites
mount more through their own configuration (enroot mount hooks, apptainer bind paths), so
the paths are checked for oci only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from aistack.launch.profile import ClusterProfile
from aistack.launch.slurm.sbatch import container_launch, container_mounts
from aistack.recipe import RecipeError

if TYPE_CHECKING:
    from aistack.launch.stages import Stage

# Sections that place the job rather than name what it reads (the image, the run root).
PLACEMENT_SECTIONS = ("resources", "output", "tracking")


def check_stage(stage: Stage, profile: ClusterProfile) -> None:
    """Raise RecipeError when the stage's jobs cannot run in the profile's container."""
    recipe = stage.loaded.recipe
    container = recipe.resources.container
    if container is None or profile.container_runtime == "none":
        return
    run_root = stage.run.path.parent
    for job in stage.plan.jobs:
        try:
            container_launch(job.resources, profile, run_root)  # raises what the runtime refuses
        except RecipeError as err:
            raise RecipeError(f"stage {stage.name} ({stage.loaded.path}), job {job.name} {err.file}", err.problems) from None
    if profile.container_runtime != "oci":
        return
    mounted = [m.split(":")[1] for m in container_mounts(recipe.resources, profile, run_root)]
    rootfs = Path(container.image) / "rootfs"
    outside = [(key, value) for key, value in host_paths(recipe.model_dump(mode="json", exclude=set(PLACEMENT_SECTIONS)))
               if not any(_under(value, dst) for dst in mounted) and not _in_image(rootfs, value)]
    if outside:  # every such path at once, named by the file that set the first
        sources, key = stage.loaded.sources, outside[0][0]
        expected = (f"a path the job sees in its container: under a mount ({', '.join(mounted)}); add its folder "
                    "to resources.container.mounts (e.g. 'SRC:SRC:ro') or the profile's container_mounts")
        raise RecipeError(sources.get(key) or sources.get(key.split("[")[0]) or str(stage.loaded.path),
                          [(key, value, expected if i == 0 else "under a mount too")
                           for i, (key, value) in enumerate(outside)])


def host_paths(data: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, value) of every string in a recipe dump that is an absolute path existing here."""
    if isinstance(data, dict):
        for name, value in data.items():
            yield from host_paths(value, f"{key}.{name}" if key else str(name))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            yield from host_paths(value, f"{key}[{index}]")
    elif isinstance(data, str) and data.startswith("/") and "\n" not in data:
        # a glob (/data/crawl/*.warc.gz) is checked by the folder before its first wildcard
        wild = min((data.index(c) for c in "*?[" if c in data), default=None)
        path = Path(data) if wild is None else Path(data[:wild] + "x").parent
        try:
            if path.exists():
                yield key, data
        except OSError:  # a name too long for this system: not a path
            pass


def _under(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or inside it, as the container resolves it: `..` steps out
    (/data/../etc is /etc, not under /data)."""
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or folder == "/" or path.startswith(folder + "/")


def _in_image(rootfs: Path, path: str) -> bool:
    """The image has it itself (a tokenizer shipped in the image, /usr/share/...)."""
    try:
        return (rootfs / path.lstrip("/")).exists()
    except OSError:
        return False
