"""The run directory: one per resolved recipe, named by its hash, holding everything.

    <root>/<name>-<hash>/
      recipe.yaml                 the resolved recipe (no secrets: see recipe.load)
      plan.json                   jobs, arrays, dependencies (PlannedJob records)
      inputs.json                 a data stage's input files as planned (paths, sizes, mtimes)
      submissions.jsonl           every submission: job, Slurm/local job id, task ids
      jobs/<job>/logs/            submitit's pickles and stdout/stderr
      jobs/<job>/tasks/<id>/      state.json (the latest attempt), DONE (result, end time),
                                  metrics.jsonl, checkpoints
      wandb/                      W&B run files (offline mode until synced)

    <root>/<pipeline>-<hash>/     a pipeline: recipe.yaml, stages.json (StageRecord
                                  records), report; its stages' run dirs beside it

The records of these files are read and written here, and only here; plan.json's and
stages.json's in aistack.plan_records.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger("aistack")

# Every array task imports this module, and a 1000-task array pays each import 1000 times:
# nothing heavy (pydantic, yaml) and nothing it can do without (typing, tempfile, socket,
# dataclasses: 25 ms of CPU a task together). The plan's records are in aistack.plan_records.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

    from aistack.recipe import LoadedRecipe, Recipe


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temp file in the same directory, then rename: readers never see half a file.

    durable: fsync the file before the rename and the directory after it, so that once this
    returns the new content survives a crash of the node, not only of the process. Records
    that a rerun rebuilds anyway (a task's RUNNING state) skip it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _new_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def _new_temp_file(path: Path) -> tuple[str, int]:
    """A new file beside `path` for this writer alone, as tempfile.mkstemp makes it (O_EXCL,
    close-on-exec, mode 0600, a random name)."""
    while True:
        tmp = os.path.join(path.parent, f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue


def host_name() -> str:
    """This machine's name (socket.gethostname, without importing socket)."""
    return os.uname().nodename


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: the directory entry itself reaches the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: Any, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", durable)


def read_json(path: Path | str, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _task_state(folder: str) -> dict[str, Any]:
    """A task folder's state.json, COMPLETED once DONE exists, ended when DONE was written
    (its mtime: a status of thousands of tasks reads no result, only plain-string paths)."""
    record = read_json(os.path.join(folder, "state.json"), default={})
    try:
        record.update(state="COMPLETED", ended_at=os.stat(os.path.join(folder, "DONE")).st_mtime)
    except FileNotFoundError:
        pass
    return record


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One JSON line appended. A line torn by a crash mid-append (no newline at the end
    of the file) is closed first, so the new record starts a line of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        if handle.tell() and _last_byte(path) != b"\n":
            handle.write(b"\n")
        handle.write((json.dumps(record, sort_keys=True) + "\n").encode())
        handle.flush()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a line that is not JSON (torn by a crash mid-append)
    is skipped with a warning naming the file and the line, never an exception."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not a whole JSON record (torn by a crash?): skipped", path, number)
    return records


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.recipe: Recipe | None = None  # the validated recipe, once write_recipe wrote it

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def for_recipe(cls, loaded: LoadedRecipe) -> "RunDir":
        root = Path(loaded.recipe.output.root).expanduser()
        return cls((root / f"{loaded.recipe.name}-{loaded.identity_hash()}").absolute())

    @property
    def name(self) -> str:
        return self.path.name

    # --- recipe and plan ---
    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    def write_recipe(self, loaded: LoadedRecipe) -> None:
        import yaml

        atomic_write_text(self.recipe_file, yaml.safe_dump(loaded.data, sort_keys=False))
        # Kept for the executors: each task's pickle carries it, so the nodes do not read
        # and validate recipe.yaml again; unless it names outputs of earlier pipeline
        # stages, which only the node can check and expand (aistack.recipe.deferred).
        self.recipe = None if loaded.deferred else loaded.recipe

    def read_recipe_data(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(self.recipe_file.read_text())

    # --- jobs and tasks ---
    def job_dir(self, job: str) -> Path:
        return self.path / "jobs" / job

    def log_dir(self, job: str) -> Path:
        return self.job_dir(job) / "logs"

    def task_dir(self, job: str, task_id: int) -> Path:
        return self.job_dir(job) / "tasks" / f"{task_id:05d}"

    def done_file(self, job: str, task_id: int) -> Path:
        return self.task_dir(job, task_id) / "DONE"

    def is_done(self, job: str, task_id: int) -> bool:
        return self.done_file(job, task_id).exists()

    def pending_tasks(self, job: str, num_tasks: int) -> list[int]:
        """Tasks without DONE."""
        done = self.done_tasks(job)
        return [t for t in range(num_tasks) if t not in done]

    def done_tasks(self, job: str) -> set[int]:
        """Tasks with DONE. Lists the task directories that exist (one per started task)
        rather than testing every id: a million-task plan answers in about a second."""
        tasks_dir = str(self.job_dir(job) / "tasks")
        return {int(name) for name in _listdir(tasks_dir) if name.isdigit()
                and os.path.exists(os.path.join(tasks_dir, name, "DONE"))}

    def task_states(self, job: str) -> dict[int, dict[str, Any]]:
        """task_state() of every task of `job` that has started, in one pass over its tasks
        folder (`aistack status` of a 10,000-task run reads each state.json once and only
        stats each DONE)."""
        tasks_dir = str(self.job_dir(job) / "tasks")
        return {int(name): _task_state(os.path.join(tasks_dir, name)) for name in _listdir(tasks_dir) if name.isdigit()}

    def task_result(self, job: str, task_id: int) -> Any:
        return read_json(self.done_file(job, task_id))

    def task_state(self, job: str, task_id: int) -> dict[str, Any]:
        """The task's latest attempt (state.json), COMPLETED with its end time once DONE
        exists: a task that succeeds writes state.json once (RUNNING), then only DONE."""
        return _task_state(str(self.task_dir(job, task_id)))

    def _state_record(self, job: str, task_id: int) -> dict[str, Any]:
        return read_json(self.task_dir(job, task_id) / "state.json", default={})

    def set_task_state(self, job: str, task_id: int, state: str, **extra: Any) -> None:
        """Atomic but not fsync'd: state.json is what `aistack status` shows, not what decides
        what runs (DONE does); after a crash of the node the task runs again anyway."""
        record = self._state_record(job, task_id)
        record.update(extra)
        record.update(state=state, host=host_name(), pid=os.getpid(), updated_at=time.time())
        atomic_write_json(self.task_dir(job, task_id) / "state.json", record, durable=False)

    def set_stopped_state(self, job: str, task_id: int, state: str, **extra: Any) -> None:
        """The state of a task another process stopped (INTERRUPTED, CANCELLED), written once
        the task's processes are gone: pid and host stay the task's own, and the
        KeyboardInterrupt the stop raised in the task is not recorded as its error."""
        record = self._state_record(job, task_id)
        if str(record.get("error", "")).startswith("KeyboardInterrupt"):
            record.pop("error", None)
            record.pop("traceback", None)
        record.update(extra)
        record.update(state=state, updated_at=time.time())
        atomic_write_json(self.task_dir(job, task_id) / "state.json", record, durable=False)

    def mark_done(self, job: str, task_id: int, result: Any) -> None:
        """The commit point of a task: atomic and durable (file and directory fsync'd)."""
        atomic_write_json(self.done_file(job, task_id), {"result": result, "finished_at": time.time()})

    # --- submissions ---
    @property
    def submissions_file(self) -> Path:
        return self.path / "submissions.jsonl"

    def record_submission(self, record: dict[str, Any]) -> None:
        append_jsonl(self.submissions_file, record)

    def latest_submissions(self) -> dict[tuple[str, int], tuple[dict[str, Any], int | None]]:
        """(job, task) -> (its latest submission record, its array index or None)."""
        latest: dict[tuple[str, int], tuple[dict[str, Any], int | None]] = {}
        for record in self.submissions():
            for index, task_id in enumerate(record["task_ids"]):
                latest[(record["job"], task_id)] = (record, index if record["array"] else None)
        return latest

    def submissions(self) -> list[dict[str, Any]]:
        return read_jsonl(self.submissions_file)


# A checkpoint folder (a training task's `checkpoints/`): one complete checkpoint per
# step_NNNNNN (with its metadata.json), `latest` naming the newest, written after it.
LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d{6,})$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def saved_steps(root: Path) -> list[int]:
    """The steps of the complete checkpoints under root, oldest first."""
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and (p / "metadata.json").exists())


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint of a checkpoint folder, or None."""
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "metadata.json").exists():
            return path
        log.warning("%s names %s, which is not a complete checkpoint: using the newest complete one", pointer, path.name)
    steps = saved_steps(root) if root.is_dir() else []
    if steps and not pointer.exists():
        log.warning("%s is missing: using the newest complete checkpoint, step %d", pointer, steps[-1])
    return step_dir(root, steps[-1]) if steps else None


# --- one live launch per run directory --------------------------------------------------

LOCK_FILE = ".aistack.lock"


class RunBusy(RuntimeError):
    """Another `aistack run` holds the run directory: starting this one could run a task twice."""


class RunLock:
    """An exclusive lock on run directories for one launch: `aistack run` holds it while it
    submits (on Slurm) or runs (here). flock on a lock file in each directory: on a shared
    file system (NFSv4, Lustre mounted with flock) it holds across hosts, and the kernel
    drops it when its holder dies, however it dies. Who holds it is written in the file."""

    def __init__(self, paths: list[Path], wait_s: float = 0.0):
        self.paths = sorted({Path(p) for p in paths})  # one order for everyone: no deadlock
        self.wait_s = wait_s
        self._held: list[int] = []

    def __enter__(self) -> "RunLock":
        import fcntl

        deadline = time.monotonic() + self.wait_s
        try:
            for path in self.paths:
                path.mkdir(parents=True, exist_ok=True)
                fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                            os.close(fd)
                            raise RunBusy(f"{path} is being run by {holder}: a second run of the same recipe would run "
                                          f"its tasks twice; follow it with `aistack status {path}`, or stop it with "
                                          f"`aistack cancel {path}`") from None
                        time.sleep(0.5)
                self._held.append(fd)
                holder = f"pid {os.getpid()} on host {host_name()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.encode(), 0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for fd in self._held:
            os.close(fd)  # closing drops the lock
        self._held = []


# --- records of a run's plan and of a pipeline's stages ------------------------------

PLAN_FILE = "plan.json"
STAGES_FILE = "stages.json"
INPUTS_FILE = "inputs.json"  # the input files a data stage was planned with (data/inputs.py)
REHEARSAL_FILE = "rehearsal.json"  # in a rehearsal run dir: the real run and jobs it stands in for (launch/rehearsal.py)


OWNER_FILE = ".aistack-run"  # in an output folder outside the run directory: the run whose output it is


def output_owner(folder: Path) -> str | None:
    """The run an output folder outside its run directory belongs to, if any."""
    try:
        return (Path(folder) / OWNER_FILE).read_text().strip() or None
    except OSError:
        return None


def claim_output(folder: Path, run: RunDir) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(folder) / OWNER_FILE, run.name + "\n")


def write_input_manifest(run: RunDir, manifest: dict[str, Any]) -> None:
    atomic_write_json(run.path / INPUTS_FILE, manifest)


def read_input_manifest(run: RunDir) -> dict[str, Any] | None:
    return read_json(run.path / INPUTS_FILE)


def span(state: dict[str, Any]) -> tuple[float, float] | None:
    """A task's start and end (or last update) from its state, None before it started."""
    started = state.get("started_at")
    return (started, state.get("ended_at") or state.get("updated_at") or started) if started else None


def elapsed_of(spans: Iterable[tuple[float, float] | None]) -> float | None:
    """From the first start to the last end of these spans."""
    known = [s for s in spans if s is not None]
    return max(end for _, end in known) - min(start for start, _ in known) if known else None


def find_run(ref: str, root: str | Path = "runs") -> RunDir:
    """A run by path, by directory name under `root`, or by unique prefix of that name."""
    candidate = Path(ref)
    if (candidate / "recipe.yaml").exists():
        return RunDir(candidate.absolute())
    root = Path(root)
    if (root / ref / "recipe.yaml").exists():
        return RunDir((root / ref).absolute())
    matches = sorted(p for p in root.glob(f"{ref}*") if (p / "recipe.yaml").exists()) if root.exists() else []
    if len(matches) == 1:
        return RunDir(matches[0].absolute())
    if not matches:
        raise FileNotFoundError(f"no run '{ref}' (looked for a run directory at {candidate} and under {root}/)")
    names = ", ".join(m.name for m in matches)
    raise FileNotFoundError(f"'{ref}' matches several runs under {root}/: {names}")
