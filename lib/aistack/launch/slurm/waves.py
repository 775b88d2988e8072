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

from aistack.launch.executor import SubmitRefused
from aistack.rundir import RunDir, append_jsonl, atomic_write_bytes, atomic_write_json, read_json, read_jsonl

if TYPE_CHECKING:
    from aistack.launch.profile import ClusterProfile
    from aistack.recipe import LoadedRecipe

FOLLOWUP_JOB = "next-wave"
WAVES_FILE = "waves.json"  # in each stage run dir with tasks waiting: the follow-up that submits them
CONTINUATION_ENTRY = "aistack.launch.launcher"  # `python -m` it with the continuation file
POLL_S = 60  # a follow-up with nothing to wait on (the queue was full) starts this much later


def submit_followup(profile: ClusterProfile, loaded: LoadedRecipe, top: RunDir, launch_id: str, after: list[str],
                    waiting: dict[RunDir, dict[str, int]], rehearse: bool = False) -> str:
    """The follow-up job of this pass: after every job in `after` (all this pass
    submitted), it submits the rest: `waiting`, per run dir, job -> tasks."""
    # Here: `aistack status` reads this module's records and needs neither submitit nor the schema.
    import submitit

    from aistack.launch.slurm.sbatch import slurm_launch
    from aistack.recipe.kinds import JobSpec
    from aistack.recipe.schema import Resources

    folder = top.path / "waves"
    folder.mkdir(parents=True, exist_ok=True)
    continuation = folder / f"continue-{uuid.uuid4().hex[:12]}.pkl"
    atomic_write_bytes(continuation, pickle.dumps({"loaded": loaded, "profile": profile, "launch": launch_id,
                                                 "rehearse": rehearse}))
    job = JobSpec(FOLLOWUP_JOB, "", 1, Resources(time=10))
    dependency = f"afterany:{':'.join(after)}" if after else None
    launch = slurm_launch(job, profile, f"{top.name}.{FOLLOWUP_JOB}", top.path.parent, dependency)
    if dependency is None:
        launch.params["additional_parameters"]["begin"] = f"now+{POLL_S}"
    slurm = submitit.SlurmExecutor(folder=folder, python=launch.python)
    slurm.update_parameters(**launch.params)
    try:
        job_id = slurm._submit_command(f"{slurm.python} -u -m {CONTINUATION_ENTRY} {shlex.quote(str(continuation))}").job_id
    except submitit.core.utils.FailedJobError as err:
        continuation.unlink(missing_ok=True)
        raise SubmitRefused(f"could not submit the follow-up that submits the next wave: {err}") from None
    record = {"followup": job_id, "launch": launch_id, "after": after, "time": time.time()}
    for run, jobs in sorted(waiting.items(), key=lambda item: str(item[0].path)):
        atomic_write_json(run.path / WAVES_FILE, {**record, "waiting": jobs})
    append_jsonl(folder / "followups.jsonl",
                 {**record, "waiting": {f"{run.name}/{job}": n for run, jobs in waiting.items() for job, n in jobs.items()}})
    return job_id


def waiting_on(run: RunDir) -> dict | None:
    """The run's latest follow-up record (its job id, the tasks it will submit), if any."""
    return read_json(run.path / WAVES_FILE)


def clear(runs: list[RunDir]) -> None:
    """A pass that leaves nothing waiting: no stage waits on a follow-up any more."""
    for run in runs:
        (run.path / WAVES_FILE).unlink(missing_ok=True)


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
