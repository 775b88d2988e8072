"""`aistack sync RUN`: upload a run's offline W&B runs (every stage's, for a pipeline).

How wandb 0.31 does it: `wandb sync [--yes] PATH...` replays the `.wandb` files of the
given run folders through wandb-core (the `--include-offline` of wandb <= 0.29 is gone:
offline folders, `wandb/offline-run-*`, are always included; folders of online runs and
files already synced are skipped). A synced file gets a `<file>.wandb.synced` marker
next to it, so a second sync uploads only what was logged since (a resumed task opens a
new offline folder with the same run id; wandb syncs the folders of one run in order of
their start). wandb reports a failed upload (the server refused the run, an expired key)
on its output but still exits 0: the markers are what tells here whether a folder made
it. A run file without its exit record yet (a task still running, or killed) is uploaded
as far as it goes, and wandb marks it all the same: the marker is removed again, so the
next sync uploads the rest (wandb itself leaves a file whose last record is torn unmarked,
saying it ends with an incomplete record).

Data runs go first, in a call of their own: their dataset artifacts (aistack.track.lineage)
must reach W&B as their outputs before a training run marks them used, since W&B keeps
the run that created a version first as its producer. For the same reason a training
run's sync includes the data runs its lineage.json names.

The API key comes from the environment (WANDB_API_KEY) or a netrc login (`wandb login`),
never from the command line: it is not passed to wandb as an argument, nor written or
printed anywhere.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aistack.plan_records import read_stage_records
from aistack.rundir import RunDir
from aistack.track.lineage import feeds, read_lineage
from aistack.track.wandb_run import _has_api_key, has_exit_record, offline_runs

# Exit codes of `aistack sync` (the CLI's: 0 ok, 1 failed, 2 bad input, nothing done).
OK, FAILED, CANNOT = 0, 1, 2


@dataclass
class SyncTarget:
    """One run directory to sync: a plain run, or one stage of a pipeline."""

    label: str  # "" for a plain run, "stage NAME" in a pipeline, "data run NAME" read by the run
    run: RunDir
    folders: list[Path] = field(default_factory=list)  # wandb/offline-run-* folders
    tracking_mode: str | None = None  # from the run's recipe.yaml; None when unknown
    kind: str | None = None

    @property
    def produces_datasets(self) -> bool:
        return self.kind is not None and feeds(self.kind, "data")

    @property
    def pending(self) -> list[Path]:
        return [f for f in self.folders if not is_synced(f)]

    @property
    def synced(self) -> list[Path]:
        return [f for f in self.folders if is_synced(f)]


@dataclass
class SyncResult:
    code: int
    lines: list[str]  # what to tell the user, one line each


def wandb_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.wandb"))


def is_synced(folder: Path) -> bool:
    """A folder is synced when every .wandb file in it has wandb's `.wandb.synced` marker."""
    files = wandb_files(folder)
    return bool(files) and all(f.with_suffix(".wandb.synced").exists() for f in files)


def is_complete(folder: Path) -> bool:
    """Every run file of the folder ends with the run's exit record (the task finished or
    was suspended for a requeue), so nothing more will be written to it."""
    files = wandb_files(folder)
    return bool(files) and all(has_exit_record(f) for f in files)


def run_id_of(folder: Path) -> str:
    """offline-run-YYYYMMDD_HHMMSS-ID -> ID."""
    return Path(folder).name.rsplit("-", 1)[-1]


def targets(run: RunDir) -> list[SyncTarget]:
    """The run directories behind RUN: itself, or each stage of a pipeline (stages.json);
    and before them, the data runs they were trained on (lineage.json) that are not among
    them, so that the dataset artifact reaches W&B from the run that made it."""
    if (run.path / "stages.json").exists():
        found = [_target(f"stage {stage.name}", stage.run) for stage in read_stage_records(run)]
        if offline_runs(run.path):  # nothing logs at the pipeline level today; if it ever does
            found.insert(0, _target("pipeline", run))
    else:
        found = [_target("", run)]
    known = {t.run.path for t in found}
    upstream = []
    for target in found:
        for dataset in (read_lineage(target.run.path) or {}).get("datasets", []):
            path = Path(dataset["run"])
            if path not in known and (path / "recipe.yaml").exists():
                known.add(path)
                upstream.append(_target(f"data run {path.name}", RunDir(path)))
    return upstream + found


def _target(label: str, run: RunDir) -> SyncTarget:
    mode = kind = None
    if run.recipe_file.exists():
        try:
            data = run.read_recipe_data() or {}
            mode, kind = (data.get("tracking") or {}).get("mode"), data.get("kind")
        except Exception:  # noqa: BLE001  (an unreadable recipe only loses the explanation)
            pass
    return SyncTarget(label, run, offline_runs(run.path), mode, kind)


def wandb_sync_command(folders: list[Path]) -> list[str]:
    """The wandb 0.31 command that uploads these offline run folders. `--yes`: no prompt
    (there may be no terminal). No key, no entity: those come from the environment."""
    return [sys.executable, "-m", "wandb", "sync", "--yes", *map(str, folders)]


def sync(run: RunDir, runner=subprocess.run) -> SyncResult:
    """Upload every not yet synced offline W&B run of `run` (each stage's, for a pipeline).

    Exit code: 0 when everything is uploaded now or was before, and when there is nothing
    yet to upload (no task has opened a W&B run, or they log online); 2 when nothing can be
    synced as asked: the run (every stage of a pipeline) has `tracking.mode: disabled`, or
    there are offline runs and no API key; 1 when wandb ran and a folder did not make it.
    """
    found = targets(run)
    pending = [f for t in found for f in t.pending]
    lines: list[str] = []
    if not pending:
        return _nothing_to_do(run, found)
    if not _has_api_key():
        return SyncResult(CANNOT, [
            f"{len(pending)} offline W&B run folder(s) to upload, but no W&B API key: set WANDB_API_KEY in the "
            "environment or log in once with `wandb login` (netrc), then run `aistack sync` again"])
    # wandb syncs several runs at once, the folders of one run in order. Two calls: first the
    # data runs, whose dataset artifacts must reach W&B as their outputs before a training
    # run marks them used (W&B keeps the first run that created a version as its producer).
    # cwd: wandb writes its own debug logs under ./wandb; the run directory has one already.
    open_folders = [f for f in pending if not is_complete(f)]
    returncodes = []
    for wave in ([f for t in found if t.produces_datasets for f in t.pending],
                 [f for t in found if not t.produces_datasets for f in t.pending]):
        if wave:
            proc = runner(wandb_sync_command(wave), cwd=str(run.path), stdin=subprocess.DEVNULL)
            returncodes.append(proc.returncode)
    synced_now = {f for f in pending if is_synced(f)}
    failed = [f for f in pending if f not in synced_now]
    # A run still being written (or cut off by a kill) is uploaded as far as it goes; wandb
    # marks it synced all the same, and would skip what it writes next: unmarked, so the next
    # `aistack sync` uploads it again, in full.
    for folder in open_folders:
        for f in wandb_files(folder):
            f.with_suffix(".wandb.synced").unlink(missing_ok=True)
    for target in found:
        lines.append(_stage_line(target, set(pending), synced_now, set(open_folders)))
    if failed:
        lines.append(f"not synced ({len(failed)}): " + ", ".join(str(f) for f in failed)
                     + "; wandb said why above; run `aistack sync` again to retry them")
        return SyncResult(FAILED, lines)
    if any(returncodes):
        lines.append(f"wandb sync exited with {max(returncodes)}")
        return SyncResult(FAILED, lines)
    return SyncResult(OK, lines)


def _stage_line(target: SyncTarget, attempted: set[Path], synced_now: set[Path] = frozenset(),
                open_folders: set[Path] = frozenset()) -> str:
    """What happened to one run's (one stage's) folders: uploaded now, before, partly, or not."""
    prefix = f"{target.label}: " if target.label else ""
    if not target.folders:
        return prefix + _why_none(target)
    now = [f for f in target.folders if f in synced_now and f not in open_folders]
    partial = [f for f in target.folders if f in synced_now and f in open_folders]
    before = [f for f in target.folders if f not in attempted]
    failed = [f for f in target.folders if f in attempted and f not in synced_now]
    parts = []
    if now:
        ids = sorted({run_id_of(f) for f in now})
        shown = ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")
        parts.append(f"synced {len(now)} folder(s) of W&B run(s) {shown}")
    if before:
        parts.append(f"{len(before)} already synced")
    if partial:
        parts.append(f"{len(partial)} uploaded as far as written (no end record: a task still running, or killed); "
                     "`aistack sync` uploads them again")
    if failed:
        parts.append(f"{len(failed)} failed")
    return prefix + "; ".join(parts)


def _why_none(target: SyncTarget) -> str:
    if target.tracking_mode == "disabled":
        return "no W&B runs (tracking.mode: disabled)"
    if (target.run.path / "wandb").is_dir():
        return "no offline W&B runs (its runs logged online)"
    if not target.run.path.exists():
        return "no W&B runs (not run yet)"
    return "no W&B runs yet (no task has opened one)"


def _nothing_to_do(run: RunDir, found: list[SyncTarget]) -> SyncResult:
    synced = [f for t in found for f in t.synced]
    lines = [_stage_line(t, set()) for t in found]
    if synced:
        return SyncResult(OK, [*lines, f"nothing new to sync in {run.path}: {len(synced)} offline W&B run folder(s), all synced before"])
    if found and all(t.tracking_mode == "disabled" for t in found):
        return SyncResult(CANNOT, [*lines, f"nothing to sync in {run.path}: W&B tracking is disabled "
                                   "(tracking.mode: disabled); its metrics are in metrics.jsonl"])
    return SyncResult(OK, [*lines, f"nothing to sync in {run.path}: no offline W&B runs"])
