"""A rehearsal: the real run's schedule on the real scheduler, a stand-in in every task.

`aistack run RECIPE --rehearse` resolves and plans the recipe as a run would and submits
the same jobs (arrays, splits past MaxArraySize, waves under a submit limit, partitions,
QOS, dependencies, containers, node and GPU counts), each in a run directory of its own
under `<output.root>/rehearsals/`, so nothing of the real run is touched or marked done.
Every task runs `aistack.jobs.rehearse` instead of its job: it checks what the task would
see (ranks, master address, GPUs, input shard, checkpoint to resume from) and ends in
seconds. A multi-process job rehearses one rank per node (its ranks' rendezvous over
every node), so a 128-node job fits on a small machine; W&B is off.
"""

from __future__ import annotations

import dataclasses

from aistack.launch.plan import REHEARSE_ENTRY, Plan
from aistack.launch.stages import Pipeline, Stage
from aistack.rundir import REHEARSAL_FILE, RunDir, atomic_write_json

FOLDER = "rehearsals"  # <output.root>/rehearsals/<the real run's or pipeline's folder name>


def rehearsal_of(pipeline: Pipeline) -> Pipeline:
    """The same stages and jobs, in rehearsal run directories, every job's entry the stand-in."""
    top = pipeline.top.path
    home = top.parent / FOLDER / top.name

    def moved(run: RunDir) -> RunDir:
        return RunDir(home / run.path.relative_to(top)) if pipeline.dir else RunDir(home)

    stages = []
    for stage in pipeline.stages:
        loaded = _untracked(stage.loaded)
        plan = Plan(loaded, [dataclasses.replace(job, entry=REHEARSE_ENTRY) for job in stage.plan.jobs])
        stages.append(dataclasses.replace(stage, loaded=loaded, plan=plan, run=moved(stage.run), rehearses=stage))
    return dataclasses.replace(pipeline, dir=RunDir(home) if pipeline.dir else None, stages=stages)


def write_rehearsal_file(stage: Stage) -> None:
    """What the stand-in checks against: the real run directory and its jobs as planned."""
    real = stage.rehearses
    assert real is not None, "only a rehearsal's stage stands in for another"
    atomic_write_json(stage.run.path / REHEARSAL_FILE, {
        "of": str(real.run.path),
        "jobs": {job.name: {"entry": job.entry, "tasks": job.num_tasks, "nodes": job.resources.nodes,
                            "tasks_per_node": job.resources.ntasks_per_node, "gpus_per_node": job.resources.gpus_per_node}
                 for job in real.plan.jobs},
    })



def _untracked(loaded):
    """No W&B runs for a rehearsal: its tasks log nothing worth keeping."""
    tracking = loaded.recipe.tracking.model_copy(update={"mode": "disabled"})
    data = {**loaded.data, "tracking": {**loaded.data.get("tracking", {}), "mode": "disabled"}}
    return dataclasses.replace(loaded, recipe=loaded.recipe.model_copy(update={"tracking": tracking}), data=data)
