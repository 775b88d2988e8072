"""`aistack run --on local` stopped by a signal (Ctrl-C, kill, a closed terminal): its tasks
end with it, process groups and all; they are recorded INTERRUPTED, finished ones keep DONE;
one line says so, with no traceback; the same command resumes and finishes the run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aistack.rundir import RunDir
from conftest import RECIPES, wait_until

SMOKE = RECIPES / "examples" / "smoke.yaml"
STEPS = 20  # 0.2 s each: a task runs about 4 s


def _expected_map(task: int) -> dict:
    """What an uninterrupted run's map task returns (jobs/smoke.py: a hash chain over every step)."""
    digest = f"task-{task}"
    for step in range(1, STEPS + 1):
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()
    return {"task": task, "steps": STEPS, "total": (task + 1) * STEPS * (STEPS + 1) // 2, "digest": digest}


def _processes_naming(text: str) -> list[str]:
    """Live (not zombie) processes whose command line names `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            line = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_text()
        except (OSError, ValueError):
            continue
        if text.encode() in line and stat[stat.rindex(")") + 2] not in "ZX":
            found.append(proc.name + ": " + line.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _aistack(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aistack.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("sig", "parallel"), [(signal.SIGINT, 1), (signal.SIGTERM, 2), (signal.SIGHUP, 2)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_stops_a_local_run_and_the_same_command_resumes(runs_root, sig, parallel):
    # parallel=1: task 0 finishes, then task 1 runs when the signal comes; parallel=2: both run.
    # SIGINT and SIGHUP go to the process group, as a terminal sends them (Ctrl-C, hangup) to
    # its foreground job; SIGTERM to the aistack process alone, as `kill` does.
    args = ["run", str(SMOKE), "--on", "local", f"output.root={runs_root}", "smoke.tasks=2", f"smoke.steps={STEPS}",
            "smoke.step_seconds=0.2", f"resources.array_parallelism={parallel}", "tracking.mode=disabled"]
    cwd = runs_root.parent
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        aistack = subprocess.Popen([sys.executable, "-m", "aistack.cli", *args], cwd=cwd, stdout=stdout, stderr=stderr,
                                   start_new_session=True)
    try:
        run = RunDir(wait_until(lambda: next(runs_root.glob("smoke-*"), None), 60, what="the run directory"))
        running = [1] if parallel == 1 else [0, 1]

        def tasks_running() -> bool:
            states = {t: run.task_state("map", t).get("state") for t in (0, 1)}
            return all(states[t] == "RUNNING" for t in running) and (parallel == 2 or states[0] == "COMPLETED")

        wait_until(tasks_running, 60, interval=0.05, what=f"map tasks {running} running")
        assert _processes_naming(str(run.path)), "the tasks run as processes of their own"
        signalled_at = time.time()
        if sig == signal.SIGTERM:
            aistack.send_signal(sig)
        else:
            os.killpg(aistack.pid, sig)
        code = aistack.wait(timeout=60)
    finally:
        if aistack.poll() is None:
            aistack.kill()
            aistack.wait()

    assert code == 128 + sig, (code, err.read_text())
    assert _processes_naming(str(run.path)) == [], "a task of the stopped run is still running"
    errors = err.read_text()
    assert "Traceback" not in errors
    lines = [line for line in errors.splitlines() if line.strip()]
    assert len(lines) == 1, errors
    name = signal.Signals(sig).name
    assert lines[0].startswith(f"interrupted by {name}: stopped job map task")
    assert "rerun the same command to resume" in lines[0]

    for task in running:
        state = run.task_state("map", task)
        assert (state["state"], state["interrupted_by"]) == ("INTERRUPTED", name)
        assert "error" not in state, "the stop is not the task's failure"
    done_before = {t: run.done_file("map", t).stat().st_mtime_ns for t in (0, 1) if t not in running}
    assert len(done_before) == 2 - len(running)

    status = _aistack("status", str(run.path), cwd=cwd)
    assert status.returncode == 0 and "RUNNING" not in status.stdout and "INTERRUPTED: " in status.stdout, status.stdout

    again = _aistack(*args, cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert {t: run.done_file("map", t).stat().st_mtime_ns for t in done_before} == done_before, "a finished task ran again"
    for task in (0, 1):
        expected = _expected_map(task)
        result = run.task_result("map", task)["result"]
        assert {key: result[key] for key in expected} == expected, f"map task {task} differs from an uninterrupted run"
    reduce = run.task_result("reduce", 0)["result"]
    assert reduce["ok"] and reduce["total"] == reduce["expected"]
    rerun = [r for r in run.submissions() if r["time"] > signalled_at]
    assert sorted((r["job"], r["task_ids"][0]) for r in rerun) == sorted([("map", t) for t in running] + [("reduce", 0)])


def test_a_second_run_is_refused_and_a_run_killed_outright_leaves_no_task_to_run_twice(runs_root):
    # kill -9 of `aistack run` cannot stop its tasks (each controller leads its own session):
    # they live on. The lock went with the killed process; the rerun stops what it left
    # running, then runs every unfinished task once.
    args = ["run", str(SMOKE), "--on", "local", f"output.root={runs_root}", "smoke.tasks=2", f"smoke.steps={STEPS}",
            "smoke.step_seconds=0.2", "resources.array_parallelism=2", "tracking.mode=disabled"]
    cwd = runs_root.parent
    with open(cwd / "first.txt", "w") as output:
        first = subprocess.Popen([sys.executable, "-m", "aistack.cli", *args], cwd=cwd, stdout=output, stderr=output,
                                 start_new_session=True)
    try:
        run = RunDir(wait_until(lambda: next(runs_root.glob("smoke-*"), None), 60, what="the run directory"))
        wait_until(lambda: all(run.task_state("map", t).get("state") == "RUNNING" for t in (0, 1)), 60, interval=0.05,
                   what="both map tasks running")
        second = _aistack(*args, cwd=cwd)
        assert second.returncode == 1 and f"is being run by pid {first.pid}" in second.stderr, second.stderr
        assert len(run.submissions()) == 2, "the second run submitted nothing"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    orphans = _processes_naming(str(run.path))
    assert orphans, "the killed run's tasks live on"

    again = _aistack(*args, cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert "left running by an earlier `aistack run`" in again.stderr
    assert _processes_naming(str(run.path)) == []
    for task in (0, 1):
        expected = _expected_map(task)
        result = run.task_result("map", task)["result"]
        assert {key: result[key] for key in expected} == expected, f"map task {task} differs from an undisturbed run"
    assert run.task_result("reduce", 0)["result"]["ok"]
