"""Chaos on the real local Slurm cluster: a filter -> dedup -> tokenize -> pretrain pipeline
runs once undisturbed, and once while a seeded killer SIGKILLs running array tasks and
single training ranks (mid-step) at random moments and requeues one running job
(`scontrol requeue`). After each round the pipeline is run again (only tasks without DONE
are submitted) until it completes; a task that finished never runs again (its DONE marker
stays as it was). Every output must then be byte-identical to the undisturbed run's: the
filtered and deduplicated documents, the MinHash work files, the tokenizer and the
Megatron .bin/.idx, every tensor of the final checkpoint (weights, optimizer state, RNG
state), the loss and validation-loss trace; and no document twice.

    AISTACK_CHAOS_SEEDS=1,2,3 pytest tests/test_chaos.py -s    # several seeds (CI runs one)

With -s the killer prints each action and the moment it made it, so a failure names the
kills that led to it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aistack.launch import launcher
from aistack.launch.executor import FINISHED
from aistack.launch.profile import load_profile
from aistack.launch.status import run_status
from aistack.launch.stages import Pipeline, resolve
from aistack.launch.status import stage_states
from aistack.plan_records import PlannedJob, read_stage_records
from aistack.recipe import load_recipe
from aistack.track.metrics import read_metrics
from conftest import RECIPES, describe_unfinished, write_recipe

SEEDS = [int(s) for s in os.environ.get("AISTACK_CHAOS_SEEDS", "1").split(",") if s.strip()]
DATA_STAGES = ("filter", "dedup", "tokenize")
STEPS = 60  # training steps; a checkpoint every 10
WORLD = 2  # training ranks (data parallel): a kill of one of them is a kill mid-collective
MAX_ROUNDS = 8
ROUND_TIMEOUT_S = 420

PIPELINE = """
kind: pipeline
name: chaos
output: {{root: {root}}}
tracking: {{mode: disabled}}
stages:
  filter:
    recipe: {recipes}/data/fineweb.yaml
    overrides:
      filter.input.paths: [{crawl}]
      resources: {{mem: null, time: 20, array_parallelism: 4}}
  dedup:
    recipe: {recipes}/data/minhash.yaml
    overrides:
      dedup.input.paths: ["${{stages.filter.output}}"]
      dedup.minhash: {{num_buckets: 4}}
      resources: {{mem: null, time: 20, array_parallelism: 4}}
  tokenize:
    recipe: {recipes}/data/tokenize.yaml
    overrides:
      tokenize.input.paths: ["${{stages.dedup.output}}"]
      tokenize.tokenizer: {{vocab_size: 512}}
      resources: {{mem: null, time: 20, array_parallelism: 4}}
  pretrain:
    recipe: {recipes}/pretrain/gpt-tiny.yaml
    overrides:
      data:
        paths: [{{path: "${{stages.tokenize.output}}"}}]
        tokenizer: "${{stages.tokenize.output.tokenizer}}"
        split: "95,5,0"
      model.vocab_size: 512
      train: {{steps: {steps}, eval_every: 20}}
      checkpoint: {{every: 10, keep: 2}}
      resources: {{tasks_per_node: {world}, time: 20}}
"""


def pipeline_recipe(directory: Path, root: Path, crawl: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = PIPELINE.format(root=root, recipes=RECIPES, crawl=crawl, steps=STEPS, world=WORLD)
    return write_recipe(directory / "chaos.yaml", text)


# --- Slurm: what of ours runs, and the rounds ----------------------------------------------


def task_ids(pipeline: Pipeline) -> dict[str, tuple[str, str, int]]:
    """Slurm id as squeue prints it (123 or 123_4) -> (stage, job, task) of every submission."""
    ids = {}
    for stage in pipeline.stages:
        for (job, task), (record, index) in stage.run.latest_submissions().items():
            if record["executor"] == "slurm":
                ids[f"{record['job_id']}_{index}" if index is not None else record["job_id"]] = (stage.name, job, task)
    return ids


def running(pipeline: Pipeline) -> dict[str, tuple[str, str, int]]:
    """Our tasks that Slurm runs now (never anyone else's: filtered by our submissions)."""
    ours = task_ids(pipeline)
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True, timeout=60)
    return {i: ours[i] for i in out.stdout.split() if i in ours}


def rows(pipeline: Pipeline):
    return [(stage.name, row) for stage in pipeline.stages if stage.run.path.exists()
            for row in run_status(stage.run, [PlannedJob(j.name, j.num_tasks) for j in stage.plan.jobs])]


def wait_round(pipeline: Pipeline, timeout_s: float = ROUND_TIMEOUT_S) -> None:
    """Until no task of this launch is queued, running or requeued: a failed task's siblings
    (and a requeued job) go on after its stage already counts as failed."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if all(row.state in FINISHED or row.state == "NOT_SUBMITTED" for _, row in rows(pipeline)):
                return
        except RuntimeError:  # accounting briefly unavailable
            pass
        time.sleep(1.0)
    live = [f"{name}/{r.job}[{r.task_id}] {r.job_id} {r.state}" for name, r in rows(pipeline)
            if r.state not in FINISHED and r.state != "NOT_SUBMITTED"]
    raise AssertionError(f"a round did not end within {timeout_s:.0f} s: still live {live}")


def done_markers(pipeline: Pipeline) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for stage in pipeline.stages for p in stage.run.path.glob("jobs/*/tasks/*/DONE")}


def run_until_complete(recipe: Path, log, max_rounds: int = MAX_ROUNDS) -> tuple[Pipeline, int]:
    """Launch; after each round, launch again (only tasks without DONE are submitted). A
    task that finished in one round never runs again: its DONE marker stays as it was."""
    profile = load_profile("slurm")
    seen: dict[str, bytes] = {}
    for round_ in range(1, max_rounds + 1):
        result = launcher.start(load_recipe(recipe), profile)
        submitted = sorted({f"{o.stage}/{s.job}" for o in result.outcomes for s in o.submitted})
        log(f"round {round_}: submitted {', '.join(submitted) or 'nothing'}")
        wait_round(result.pipeline)
        now = done_markers(result.pipeline)
        rewritten = sorted(path for path, text in seen.items() if now.get(path) != text)
        assert not rewritten, f"finished tasks ran again (DONE rewritten or gone): {rewritten}"
        seen = now
        states = stage_states(read_stage_records(result.pipeline.dir))
        if all(s.state == "COMPLETED" for s in states):
            return result.pipeline, round_
        log(f"round {round_} ended: " + ", ".join(f"{s.name} {s.state} {s.done}/{s.total}" for s in states))
    raise AssertionError(f"not complete after {max_rounds} rounds:\n{describe_unfinished(states)}")


# --- the killer -----------------------------------------------------------------------------


@dataclass
class Event:
    action: str  # kill | requeue
    target: str  # data (a running array task of filter/dedup/tokenize) | train (a training rank / job)
    stage: str = ""  # data: the stage whose tasks it aims at (any running data task once that one is done)
    delay_s: float = 0.0  # data: how long after such a task is seen running
    at_step: int = 0  # train: once the running attempt has logged this step
    rank: int = 0  # train kill: which rank


def chaos_plan(seed: int) -> list[Event]:
    """2-3 kills of data tasks, 2 kills of a training rank, one requeue somewhere: all drawn
    from random.Random(seed). Data events come first, in stage order (the order they run).
    The first training event lands before the first checkpoint (step 10: the next attempt
    starts over), the others after one (it resumes), each in the attempt after the last."""
    rng = random.Random(seed)
    data = [Event("kill", "data", rng.choice(DATA_STAGES), round(rng.uniform(0.0, 3.0), 2))
            for _ in range(rng.randint(2, 3))]
    first = rng.randint(2, 7)
    later = sorted(rng.sample(range(first + 8, STEPS - 15), 2))  # the run's last steps can be quick
    while later[1] - later[0] < 8:
        later = sorted(rng.sample(range(first + 8, STEPS - 15), 2))
    train = [Event("kill", "train", rank=rng.randrange(WORLD)) for _ in range(2)]
    if rng.choice(["data", "train"]) == "data":
        data.append(Event("requeue", "data", rng.choice(DATA_STAGES), round(rng.uniform(0.0, 3.0), 2)))
    else:
        train.insert(rng.randint(0, len(train)), Event("requeue", "train"))
    for event, step in zip(train, [first, *later]):
        event.at_step = step
    return sorted(data, key=lambda e: DATA_STAGES.index(e.stage)) + train  # stable: draws keep their order


@dataclass
class Killer:
    pipeline: Pipeline
    events: list[Event]
    rng: random.Random
    log: callable
    made: list[dict] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    t0: float = field(default_factory=time.time)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            self._last_train_attempt = -1
            events = list(self.events)
            while events and not self.stop.is_set():
                event = events.pop(0)
                done = self._data(event) if event.target == "data" else self._train(event)
                if not done and event.action == "requeue" and event.target == "data":
                    # the data stages ended first: the one requeue goes to the training job instead
                    first = next((e.at_step for e in events if e.target == "train"), STEPS - 6)
                    events.insert(next((i for i, e in enumerate(events) if e.target == "train"), len(events)),
                                  Event("requeue", "train", at_step=max(2, first - 5)))
        except BaseException as err:  # reported by the test
            self.error = err

    def _note(self, what: str, **fields) -> None:
        record = {"t": round(time.time() - self.t0, 2), "what": what, **fields}
        self.made.append(record)
        self.log("killer: " + json.dumps(record, sort_keys=True))

    # data: a random running array task of filter/dedup/tokenize
    def _data_running(self, stage: str) -> dict[str, tuple[str, str, int]]:
        """Running tasks of `stage`; of any data stage once `stage` has nothing left to run."""
        stages = (stage,) if not self._stage_done(stage) else DATA_STAGES
        return {i: t for i, t in running(self.pipeline).items() if t[0] in stages}

    def _stage_done(self, name: str) -> bool:
        stage = self.pipeline.stage(name)
        return stage.run.path.exists() and not any(stage.run.pending_tasks(j.name, j.num_tasks) for j in stage.plan.jobs)

    def _data_done(self) -> bool:
        return all(self._stage_done(n) for n in DATA_STAGES)

    def _data(self, event: Event) -> bool:
        while not self.stop.is_set():
            if self._data_done():
                self._note(f"skipped {event.action} of a data task: the data stages are done")
                return False
            if not self._data_running(event.stage):
                time.sleep(0.2)
                continue
            time.sleep(event.delay_s)
            live = self._data_running(event.stage)
            if not live:
                continue
            slurm_id = self.rng.choice(sorted(live))
            stage, job, task = live[slurm_id]
            if event.action == "kill":
                cmd = ["scancel", "--full", "--signal=KILL", slurm_id]
            else:
                cmd = ["scontrol", "requeue", slurm_id]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            self._note(f"{event.action} {stage}/{job}[{task}]", slurm_id=slurm_id, delay_s=event.delay_s,
                       rc=out.returncode, stderr=out.stderr.strip()[:200])
            if out.returncode == 0:
                return True
            # it ended between squeue and the signal: try another moment
        return False

    # train: one rank of the running training job, once its attempt has logged `at_step`
    def _train(self, event: Event) -> bool:
        stage = self.pipeline.stage("pretrain")
        metrics = stage.run.task_dir("train", 0) / "metrics.jsonl"
        while not self.stop.is_set():
            state = stage.run.task_state("train", 0)
            if state.get("state") == "COMPLETED":
                self._note(f"skipped {event.action} of training at step {event.at_step}: training is done")
                return False
            attempt = int(state.get("attempt", -1))
            logged = [r["step"] for r in read_metrics(metrics) if "loss" in r] if metrics.exists() else []
            # the files first (cheap), Slurm only once the step is reached
            if attempt <= self._last_train_attempt or not logged or logged[-1] < event.at_step:
                time.sleep(0.05)
                continue
            live = [i for i, t in running(self.pipeline).items() if t[0] == "pretrain"]
            if not live:
                time.sleep(0.05)
                continue
            slurm_id = live[0]
            if event.action == "requeue":
                out = subprocess.run(["scontrol", "requeue", slurm_id], capture_output=True, text=True, timeout=60)
                self._note("requeue pretrain/train", slurm_id=slurm_id, step=logged[-1], attempt=attempt,
                           rc=out.returncode, stderr=out.stderr.strip()[:200])
            else:
                pid = rank_pid(slurm_id, event.rank)
                if pid is None:
                    time.sleep(0.1)
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self._note(f"kill pretrain/train rank {event.rank}", slurm_id=slurm_id, pid=pid, step=logged[-1],
                           attempt=attempt, rc=0)
            self._last_train_attempt = attempt
            return True
        return False


def cancel_live(pipeline: Pipeline) -> None:
    """scancel what of this pipeline is still queued or running (a failed test leaves nothing behind)."""
    ours = {i.split("_")[0] for i in task_ids(pipeline)}
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60)
    live = sorted({i.split("_")[0] for i in out.stdout.split()} & ours)
    if live:
        subprocess.run(["scancel", *live], capture_output=True, timeout=60)


def rank_pid(job_id: str, rank: int) -> int | None:
    """The process of one rank of a running multi-process job, found in /proc by its Slurm
    variables: `scontrol listpids` asks only the slurmd this host's name maps to, and here
    every node's slurmd shares one host, so it misses ranks on the other nodes. A rank's
    forked helpers share its environment and command line: the rank is the one whose parent
    is not one of them; of several steps (a requeue's leftovers), the newest."""
    found = {}  # pid -> (step id, parent pid)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"aistack.runtime.node" not in (proc / "cmdline").read_bytes():
                continue
            env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile, or not ours to read
        if env.get(b"SLURM_JOB_ID") == job_id.encode() and env.get(b"SLURM_PROCID") == str(rank).encode():
            step = env.get(b"SLURM_STEP_ID", b"-1")
            found[int(proc.name)] = (int(step) if step.isdigit() else -1, parent)
    ranks = [(step, pid) for pid, (step, parent) in found.items() if parent not in found]
    return max(ranks)[1] if ranks else None


# --- what is compared -----------------------------------------------------------------------


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stage_outputs(pipeline: Pipeline, name: str) -> dict[str, bytes]:
    """Every file a stage published, and its MinHash work files (not the staging area)."""
    run = pipeline.stage(name).run.path
    files = {f"output/{k}": v for k, v in files_under(run / "output").items()}
    files.update({f"work/{k}": v for k, v in files_under(run / "work").items() if not k.startswith("staging/")})
    return files


def documents(pipeline: Pipeline, name: str) -> list[dict]:
    import pyarrow.parquet as pq

    folder = pipeline.stage(name).run.path / "output" / name / "documents"
    return [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def task_counts(pipeline: Pipeline, name: str) -> dict[str, dict]:
    """What each task of a data stage recorded in DONE, less its timing and paths."""
    run = pipeline.stage(name).run
    keep = ("documents_in", "documents_out", "tokens", "bytes_in", "bytes_out", "vocab_size", "eos_id",
            "trained_on_documents", "shards")
    out = {}
    for job in pipeline.stage(name).plan.jobs:
        for task in range(job.num_tasks):
            result = run.task_result(job.name, task)["result"]
            out[f"{job.name}[{task}]"] = {k: result[k] for k in keep if k in result}
    return out


def checkpoint_state(step_dir: Path, scratch: Path) -> dict:
    """Every tensor and value of a distributed checkpoint, by name, read without a process group."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    scratch.parent.mkdir(parents=True, exist_ok=True)
    dcp_to_torch_save(str(step_dir), str(scratch))
    state = {"sharded": torch.load(scratch, weights_only=False), "common": torch.load(step_dir / "common.pt", weights_only=False)}
    state["rng"] = {p.name: torch.load(p, weights_only=False) for p in sorted((step_dir / "rng").glob("*.pt"))}
    state["aistack"] = json.loads((step_dir / "aistack.json").read_text())
    return state


def differences(a, b, path: str = "") -> list[str]:
    """Where two nested values differ; tensors compared bit for bit."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(map(str, set(a) ^ set(b)))[:5]} in one only"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = (a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.detach().contiguous().reshape(-1).view(torch.uint8),
                                b.detach().contiguous().reshape(-1).view(torch.uint8)))
        return [] if same else [f"{path}: tensors differ"]
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


def loss_trace(pipeline: Pipeline) -> list[tuple]:
    metrics = pipeline.stage("pretrain").run.task_dir("train", 0) / "metrics.jsonl"
    return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("lr"), r.get("val_loss")) for r in read_metrics(metrics)]


def train_result(pipeline: Pipeline) -> dict:
    result = pipeline.stage("pretrain").run.task_result("train", 0)["result"]
    return {k: result[k] for k in ("steps", "tokens", "loss", "val_loss", "grad_norm", "lr", "layout")}


# --- fixtures and the test --------------------------------------------------------------------


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> Path:
    from aistack.data.sample_crawl import build_corpus

    root = tmp_path_factory.mktemp("chaos-crawl") / "crawl"
    build_corpus(root, shards=2, real=120, near_dups=8)
    return root


class Reference:
    """The undisturbed run, shared by every seed: started by the first test, beside its chaos
    run (both fit the two nodes at once), and waited for when it is first compared."""

    def __init__(self, recipe: Path):
        self.recipe = recipe
        self.launch = None
        self.pipeline: Pipeline | None = None

    def start(self) -> None:
        if self.launch is None:
            self.launch = launcher.start(load_recipe(self.recipe), load_profile("slurm"))

    def finish(self) -> Pipeline:
        if self.pipeline is None:
            self.start()
            wait_round(self.launch.pipeline)
            states = stage_states(read_stage_records(self.launch.pipeline.dir))
            assert all(s.state == "COMPLETED" for s in states), "undisturbed run:\n" + describe_unfinished(states)
            self.pipeline = self.launch.pipeline
        return self.pipeline


@pytest.fixture(scope="module")
def reference(tmp_path_factory, crawl):
    base = tmp_path_factory.mktemp("chaos-reference")
    ref = Reference(pipeline_recipe(base, base / "runs", crawl))
    yield ref
    if ref.launch is not None:
        cancel_live(ref.launch.pipeline)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_killed_and_requeued_pipeline_matches_the_undisturbed_run(seed, reference, crawl, tmp_path):
    t0 = time.time()
    lines: list[str] = []

    def log(message: str) -> None:
        line = f"[seed {seed} +{time.time() - t0:6.1f}s] {message}"
        lines.append(line)
        print(line, flush=True)

    reference.start()
    recipe = pipeline_recipe(tmp_path, tmp_path / "runs", crawl)
    plan = chaos_plan(seed)
    log("plan: " + "; ".join(f"{e.action} {e.target}" + (f" at step {e.at_step} rank {e.rank}" if e.target == "train"
                                                          else f" {e.stage} {e.delay_s}s after one runs") for e in plan))
    killer = Killer(resolve(load_recipe(recipe)), plan, random.Random(seed), log, t0=t0)
    thread = killer.start()
    try:
        pipeline, rounds = run_until_complete(recipe, log)
    finally:
        killer.stop.set()
        thread.join(timeout=60)
        cancel_live(killer.pipeline)
    assert killer.error is None, f"the killer failed: {killer.error!r}"
    made = [m for m in killer.made if m.get("rc") == 0]
    summary = "\n".join(lines)
    assert sum(m["what"].startswith("requeue") for m in made) == 1, f"exactly one requeue:\n{summary}"
    assert any(m["what"].startswith("kill") and "pretrain" not in m["what"] for m in made), summary
    assert any(m["what"].startswith("kill pretrain") for m in made), summary
    assert rounds > 1, f"the kills failed no round?\n{summary}"

    ref = reference.finish()
    log(f"complete after {rounds} rounds; comparing with the undisturbed run")

    # data: every published file and MinHash work file, byte for byte; per-task counts
    for name in DATA_STAGES:
        got, want = stage_outputs(pipeline, name), stage_outputs(ref, name)
        assert sorted(got) == sorted(want), f"{name}: other files than the undisturbed run\n{summary}"
        changed = [path for path in want if got[path] != want[path]]
        assert not changed, f"{name}: files differ from the undisturbed run: {changed}\n{summary}"
        assert task_counts(pipeline, name) == task_counts(ref, name), f"{name}: task results differ\n{summary}"
    # no document twice, none lost
    for name in ("filter", "dedup"):
        docs = documents(pipeline, name)
        assert docs and docs == documents(ref, name), name
        assert len({d["id"] for d in docs}) == len(docs), f"{name}: a document id appears twice"
        assert len({d["text"] for d in docs}) == len(docs), f"{name}: a document text appears twice"
    from aistack.data.megatron import open_dataset

    tokenized = open_dataset(pipeline.stage("tokenize").run.path / "output" / "tokenize" / "data")
    assert len(tokenized) == len(documents(pipeline, "dedup")), "every deduplicated document tokenized once"

    # training: the same steps and losses in one clean trace, the same final checkpoint, bit for bit
    trace = loss_trace(pipeline)
    assert [s for s, loss, *_ in trace if loss is not None] == list(range(1, STEPS + 1)), summary
    assert trace == loss_trace(ref), f"loss / validation-loss trace differs from the undisturbed run\n{summary}"
    assert train_result(pipeline) == train_result(ref)
    ckpts = pipeline.stage("pretrain").run.task_dir("train", 0) / "checkpoints"
    ref_ckpts = ref.stage("pretrain").run.task_dir("train", 0) / "checkpoints"
    assert (ckpts / "latest").read_text() == (ref_ckpts / "latest").read_text() == f"step_{STEPS:06d}\n"
    assert sorted(p.name for p in ckpts.glob("step_*")) == sorted(p.name for p in ref_ckpts.glob("step_*"))
    diff = differences(checkpoint_state(ckpts / f"step_{STEPS:06d}", tmp_path / "scratch" / "got.pt"),
                       checkpoint_state(ref_ckpts / f"step_{STEPS:06d}", tmp_path / "scratch" / "want.pt"))
    assert not diff, f"final checkpoint differs from the undisturbed run: {diff[:10]}\n{summary}"
    train_kills = [m for m in made if m["what"].startswith(("kill pretrain", "requeue pretrain"))]
    if any(m["step"] > 10 for m in train_kills):
        logs = "".join(p.read_text(errors="replace") for p in pipeline.stage("pretrain").run.log_dir("train").glob("*_log.out"))
        assert "resuming from step" in logs, "a training kill after a checkpoint resumed from it"
    log(f"identical to the undisturbed run; {len(made)} actions, {rounds} rounds, {time.time() - t0:.0f} s")


def test_a_dataset_cache_cut_short_by_a_kill_is_rebuilt(tmp_path):
    """The random killer rarely lands inside megatron's write of a training task's dataset
    index cache (milliseconds); this is that kill, made on purpose: the rerun must rebuild
    the cache, not fail on the truncated file forever."""
    from types import SimpleNamespace

    from aistack.model.dataset import Tokenizer, build_datasets, make_tiny_dataset

    prefix = make_tiny_dataset(tmp_path / "tiny", vocab_size=512, num_docs=200)
    cfg = SimpleNamespace(paths=[SimpleNamespace(path=str(prefix), weight=1.0)], split="90,10,0")
    tokenizer = Tokenizer(vocab_size=512, eod=0, name="pretokenized")
    cache = tmp_path / "task" / "data_cache"
    train, _ = build_datasets(cfg, 64, 1234, 80, 16, tokenizer, cache)
    want = [train[i]["tokens"].tolist() for i in range(8)]
    # what a SIGKILL in the middle of numpy.save leaves: the last index file cut short, no end marker
    victim = sorted(cache.glob("*-train-shuffle_index.npy"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (cache / "COMPLETE").unlink(missing_ok=True)
    train, _ = build_datasets(cfg, 64, 1234, 80, 16, tokenizer, cache)
    assert [train[i]["tokens"].tolist() for i in range(8)] == want
    assert (cache / "COMPLETE").exists()
