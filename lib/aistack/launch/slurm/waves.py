"""Submission in waves under a submit limit, with nothing waiting on the login node.

When a QOS or association caps how many jobs a user may queue (every array task counts),
`aistack run` submits the first wave of what fits and one small CPU job, the follow-up,
that depends (afterany) on everything it submitted. The follow-up runs the launcher's
continuation (`python -m aistack.launch.launcher CONTINUATION`): it starts the same launch again, which submits the next wave (tasks with no DONE marker,
not queued, not failed in this launch) and the jobs that were waiting on the last one,
and, while tasks are still left, its own follow-up. datatrove's
`max_array_launch_parallel` does the same from a process that stays on the login node.
"""

from __future__ import annotations

import os
import pickle
import shlex
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import submitit

from aistack.launch.executor import SubmitRefused
from aistack.rundir import RunDir, append_jsonl, atomic_write_bytes, atomic_write_json, read_json, read_jsonl
from aistack.launch.slurm.sbatch import slurm_launch
from aistack.recipe.kinds import JobSpec
from aistack.recipe.schema import Resources

if TYPE_CHECKING:
    from aistack.launch.profile import ClusterProfile
    from aistack.launch.slurm.executor import SlurmExecutor
    from aistack.launch.stages import Pipeline
    from aistack.recipe import LoadedRecipe

FOLLOWUP_JOB = "next-wave"
WAVES_FILE = "waves.json"  # in each stage run dir with tasks waiting: the follow-up that submits them
CONTINUATION_ENTRY = "aistack.launch.launcher"  # `python -m` it with the continuation file
POLL_S = 60  # a follow-up with nothing to wait on (the queue was full) starts this much later


def top_dir(pipeline: Pipeline) -> RunDir:
    return pipeline.dir or pipeline.stages[0].run


def submit_followup(executor: SlurmExecutor, pipeline: Pipeline, loaded: LoadedRecipe,
                    profile: ClusterProfile) -> str:
    """The follow-up job of this pass: after every job it submitted, it submits the rest."""
    top = top_dir(pipeline)
    folder = top.path / "waves"
    folder.mkdir(parents=True, exist_ok=True)
    continuation = folder / f"continue-{uuid.uuid4().hex[:12]}.pkl"
    atomic_write_bytes(continuation, pickle.dumps({"loaded": loaded, "profile": profile, "launch": executor.launch_id}))
    job = JobSpec(FOLLOWUP_JOB, "", 1, Resources(time=10))
    after = f"afterany:{':'.join(executor.submitted_ids)}" if executor.submitted_ids else None
    launch = slurm_launch(job, profile, f"{top.name}.{FOLLOWUP_JOB}", top.path.parent, after)
    if after is None:
        launch.params["additional_parameters"]["begin"] = f"now+{POLL_S}"
    slurm = submitit.SlurmExecutor(folder=folder, python=launch.python)
    slurm.update_parameters(**launch.params)
    try:
        job_id = slurm._submit_command(f"{slurm.python} -u -m {CONTINUATION_ENTRY} {shlex.quote(str(continuation))}").job_id
    except submitit.core.utils.FailedJobError as err:
        continuation.unlink(missing_ok=True)
        raise SubmitRefused(f"could not submit the follow-up that submits the next wave: {err}") from None
    record = {"followup": job_id, "launch": executor.launch_id, "after": executor.submitted_ids, "time": time.time()}
    for run_path in sorted({path for path, _ in executor.waiting}):
        waiting = {name: n for (path, name), n in executor.waiting.items() if path == run_path}
        atomic_write_json(Path(run_path) / WAVES_FILE, {**record, "waiting": waiting})
    append_jsonl(folder / "followups.jsonl", {**record, "waiting": {f"{Path(p).name}/{n}": k for (p, n), k in executor.waiting.items()}})
    return job_id


def waiting_on(run: RunDir) -> dict | None:
    """The run's latest follow-up record (its job id, the tasks it will submit), if any."""
    return read_json(run.path / WAVES_FILE)


def clear(pipeline: Pipeline) -> None:
    """A pass that leaves nothing waiting: no stage waits on a follow-up any more."""
    for stage in pipeline.stages:
        (stage.run.path / WAVES_FILE).unlink(missing_ok=True)


def superseded_by(continuation: Path) -> str | None:
    """The chain's latest follow-up, when it is not this job: a follow-up requeued after it
    had submitted its successor (preempted on its way out) leaves the rest to that one."""
    records = read_jsonl(continuation.parent / "followups.jsonl")
    me = os.environ.get("SLURM_JOB_ID")
    return records[-1]["followup"] if me and records and records[-1]["followup"] != me else None


def read_continuation(continuation: Path) -> dict:
    """What the follow-up continues: the loaded recipe, the profile and the launch id (a
    pickle aistack wrote into its own run directory, never a file a user hands over)."""
    return pickle.loads(continuation.read_bytes())
