"""Weights & Biases: one run per tracked task, with an id that survives requeues.

The id is derived from the run directory, job and task, so a requeued or rerun task
logs into the same W&B run (resume="allow"). A W&B run's history cannot be cut back to
a checkpoint (rewind is a preview feature of W&B's cloud only): the steps an earlier
attempt logged past the checkpoint it resumes from (all of them, for a restart from
scratch) are redone but not sent again, and the steps before it that a killed attempt's
W&B service lost are sent from metrics.jsonl, so each step is in the W&B run once. What
W&B holds is read from W&B itself: the step a resumed online run starts at, or the
earlier attempts' offline files. The task's metrics.jsonl holds the attempt that finished. Without an API key the mode is offline:
run files land in <run>/wandb/ and `aistack sync RUN` uploads them from a login node.
Only global rank 0 of a task opens a run.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

log = logging.getLogger("aistack")

# Every task imports this module, most with tracking off: no pydantic schema, no typing, and
# what only a tracked task needs (hashlib, netrc) is imported where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

    from aistack.recipe.schema import Tracking


def resolve_mode(tracking: Tracking) -> str:
    if tracking.mode != "auto":
        return tracking.mode
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    return base in hosts


def run_id(run_name: str, job: str, task_id: int) -> str:
    import hashlib

    return hashlib.sha256(f"{run_name}/{job}/{task_id}".encode()).hexdigest()[:16]


class WandbRun:
    """Thin wrapper around a W&B run: log, summary, finish; a no-op when disabled.

    `suspend()` finishes the underlying run so its buffered records reach the run files
    (before a checkpoint-and-requeue); the next log reopens the same run id. Safe to call
    from a signal handler: a suspend that arrives during a log runs right after it.
    A hard kill (scontrol requeue, SIGKILL) loses what W&B had not flushed yet: its
    service process dies with the job. metrics.jsonl, written line by line, keeps every
    step either way.
    """

    def __init__(self, opener: Callable[[], Any] | None = None):
        self._opener = opener
        self._run = None
        self._busy = False
        self._suspend_requested = False
        self._logged_through = -1 << 62  # the last step an earlier attempt sent under this id
        self.error: str | None = None  # why W&B was given up, if it was
        if opener:
            try:
                self._run = opener()
            except Exception as err:  # noqa: BLE001
                self._give_up(err)

    @property
    def run(self) -> Any:
        """The wandb Run (for tables, images), reopened if suspended; None when disabled."""
        if self._run is None and self._opener is not None:
            self._run = self._opener()
        return self._run

    @property
    def id(self) -> str | None:
        return self._run.id if self._run else None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if step <= self._logged_through:
            return  # an earlier attempt sent this step: W&B would keep the first one anyway
        self._call(lambda run: run.log(values, step=step))

    def resume_after(self, step: int) -> int:
        """This attempt resumed at `step`: the steps after it that W&B already holds under
        this id are redone but not sent again. Returns the last step W&B holds (-1: none)."""
        held = self._held_through()
        if held > self._logged_through:
            self._logged_through = held
        if held > step:
            log.info("W&B already holds steps %d..%d from an earlier attempt: they are redone but not logged there "
                     "again (metrics.jsonl has this attempt's)", max(step + 1, 0), held)
        return held

    def _held_through(self) -> int:
        """The last step earlier attempts put in this W&B run: online, the resumed run
        starts after it; offline, it is in their run files beside this one's."""
        run = self.run if self._opener is not None else None
        if run is None:
            return -1
        if not getattr(run, "offline", False):
            return run.starting_step - 1
        own = Path(run.dir).parent  # <dir>/wandb/offline-run-<time>-<id>/files
        earlier = [p for p in own.parent.glob(f"offline-run-*-{run.id}") if p != own]
        return max((last_step(p) for p in earlier), default=-1)

    def summary(self, values: dict[str, Any]) -> None:
        self._call(lambda run: run.summary.update(values))

    @property
    def enabled(self) -> bool:
        """Whether anything goes to W&B (not disabled, not given up)."""
        return self._opener is not None

    def log_artifact(self, artifact: Any) -> None:
        """An output of this run (a data run's dataset), offline too."""
        self._call(lambda run: run.log_artifact(artifact))

    def use_artifact(self, artifact: Any) -> None:
        """An input of this run (the dataset a model trains on). Offline, wandb's
        use_artifact refuses; with a new artifact it logs it marked "use after commit",
        so that is done instead: the record is in the run file and syncs with it."""

        def use(run: Any) -> None:
            if getattr(run, "offline", False):
                run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
            else:
                run.use_artifact(artifact)

        self._call(use)

    def _call(self, action: Callable[[Any], None]) -> None:
        if self._opener is None:
            return
        self._busy = True
        try:
            action(self.run)
        except Exception as err:  # noqa: BLE001  (W&B is a mirror: metrics.jsonl has it all)
            self._give_up(err)
        finally:
            self._busy = False
        if self._suspend_requested:
            self.suspend()

    def _give_up(self, err: Exception) -> None:
        """W&B broke (its service died with a preempted job's SIGTERM, the network went):
        the work goes on without it, said once in the log; the run is not failed for it."""
        self.error = f"{type(err).__name__}: {err}"
        log.warning("W&B failed, logging to metrics.jsonl only from here: %s", self.error)
        self._run, self._opener = None, None

    def suspend(self) -> None:
        if self._busy:
            self._suspend_requested = True
            return
        self._suspend_requested = False
        if self._run is not None:
            run, self._run = self._run, None
            try:
                run.finish()
            except Exception as err:  # noqa: BLE001
                self._give_up(err)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as err:  # noqa: BLE001  (finished work stays finished)
                self._give_up(err)
        self._opener = None


def start(
    tracking: Tracking,
    run_dir: Path,
    run_name: str,
    kind: str,
    job: str,
    task_id: int,
    config: dict[str, Any],
) -> WandbRun:
    mode = resolve_mode(tracking)
    if mode == "disabled":
        return WandbRun(None)
    import wandb

    _forget_inherited_service()

    return WandbRun(lambda: wandb.init(
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group or run_name,
        job_type=kind,
        name=f"{run_name}/{job}/{task_id}",
        id=run_id(run_name, job, task_id),
        resume="allow",
        config=config,
        tags=tracking.tags or None,
        dir=str(run_dir),
        mode=mode,
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    ))


def _forget_inherited_service() -> None:
    """wandb keeps the address of the service it started in WANDB_SERVICE ("3-<pid>-...")
    and sbatch exports the submitter's environment: a task would connect to a service of
    the login node's process (another host, or gone) and log nothing. A token made by
    another process is dropped, so the task starts its own service."""
    token = os.environ.get("WANDB_SERVICE", "")
    if token and token.split("-")[1:2] != [str(os.getpid())]:
        del os.environ["WANDB_SERVICE"]


# --- reading offline run files back (tests, `aistack status`) ------------------------
# A .wandb file is W&B's append-only log: a 7-byte header (":W&B", magic 0xBEE1,
# version 0), then LevelDB-style records in 32 KiB blocks, each a 7-byte header
# (crc32, length, type) and a protobuf `Record`; a record split over blocks comes in
# FIRST/MIDDLE/LAST pieces.

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def read_records(wandb_file: Path, last_blocks: int | None = None) -> Iterator[Any]:
    """The records of a .wandb file; with `last_blocks`, only those that start in its last
    N blocks (what a run wrote last, without reading all of a long run's file)."""
    from wandb.proto import wandb_internal_pb2

    path = Path(wandb_file)
    with open(path, "rb") as f:
        head = f.read(7)
        start = 7
        if last_blocks is not None:
            size = f.seek(0, 2)
            start = max(7, (size // _BLOCK - last_blocks + 1) * _BLOCK)
        f.seek(start)
        data = f.read()  # data[i] is the file's byte start + i: block boundaries are file offsets
    ident, magic, version = struct.unpack("<4sHB", head)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{wandb_file} is not a W&B run file")
    pos, pending, inside = start, b"", False
    end = start + len(data)
    while pos + 7 <= end:
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:  # zero padding at the end of a block
            pos += left_in_block
            continue
        at = pos - start
        crc, length, rtype = struct.unpack("<IHB", data[at : at + 7])
        payload = data[at + 7 : at + 7 + length]
        pos += 7 + length
        if rtype == 0 and length == 0:
            continue
        if zlib.crc32(bytes([rtype]) + payload) & 0xFFFFFFFF != crc:
            break  # torn tail of a killed writer: stop at the last whole record
        if rtype == _FULL:
            pending = payload
        elif rtype == _FIRST:
            pending, inside = payload, True
            continue
        elif rtype in (_MIDDLE, _LAST) and not inside:  # the rest of a record that began before `start`
            continue
        elif rtype == _MIDDLE:
            pending += payload
            continue
        elif rtype == _LAST:
            pending, inside = pending + payload, False
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def last_step(run_path: Path) -> int:
    """The last history step in an offline run's file (-1: none), read from its tail
    first: history steps only grow within one file."""
    files = list(Path(run_path).glob("run-*.wandb"))
    if not files:
        return -1
    for last_blocks in (4, None):
        try:
            steps = [r.history.step.num for r in read_records(files[0], last_blocks)
                     if r.WhichOneof("record_type") == "history"]
        except (OSError, ValueError, struct.error):
            return -1
        if steps:
            return max(steps)
    return -1


def has_exit_record(wandb_file: Path) -> bool:
    """Whether the run ended (finish() wrote its exit record): not still being written, nor
    cut off by a kill. The exit record is among the last few a run writes."""
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in read_records(wandb_file, last_blocks=2))
    except (OSError, ValueError, struct.error):
        return False


def read_offline_run(run_path: Path) -> dict[str, Any]:
    """{'id': ..., 'history': [{'_step': n, key: value, ...}], 'config': {...}, 'artifacts': [...]} of one
    offline run; each artifact {'type', 'name', 'digest', 'used' (logged as an input), 'metadata',
    'entries': [{'path', 'ref', 'digest', 'size'}]}; 'finished': the run's exit record is written
    (wandb's service may still be writing the file for a moment after `finish()` returned)."""
    import json

    files = list(Path(run_path).glob("run-*.wandb"))
    out: dict[str, Any] = {"id": None, "history": [], "config": {}, "artifacts": [], "finished": False}
    if not files:  # an attempt killed (requeued, preempted) before wandb wrote its file: nothing logged
        return out
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            out["history"].append(row)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "exit":
            out["finished"] = True
        elif kind == "artifact":
            art = record.artifact
            out["artifacts"].append({
                "type": art.type, "name": art.name, "digest": art.digest, "used": art.use_after_commit,
                "metadata": json.loads(art.metadata) if art.metadata else {},
                "entries": [{"path": e.path, "ref": e.ref, "digest": e.digest, "size": e.size} for e in art.manifest.contents],
            })
    return out
