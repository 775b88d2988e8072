"""A task's W&B run resumed online (a requeue, a rerun): each step reaches W&B once.

No internet here: tests/wandb_stand_in.py is a loopback server speaking the part of W&B's
protocol a run uses, including `RunResumeStatus` for a run it holds history of, which is
how wandb-core learns where a resumed run starts. Each attempt runs in a process of its
own, as a task does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from wandb_stand_in import StandInServer

from aistack.track.wandb_run import run_id

DUMMY_KEY = "dummykey_" + "0123456789abcdef" * 3  # W&B wants 40+ characters

ATTEMPT = """
import json, sys
from pathlib import Path
from aistack.recipe.schema import Tracking
from aistack.track.wandb_run import start

first, last, resumed_at = (int(a) for a in sys.argv[2:5])
run = start(Tracking(mode="online", project="resume-test"), Path(sys.argv[1]), "r", "smoke", "map", 0, {})
held = run.resume_after(resumed_at) if resumed_at >= 0 else None
for step in range(first, last + 1):
    run.log(step, {"loss": float(step)})
run.finish()
print(json.dumps({"held": held, "error": run.error}))
"""


def _attempt(tmp_path, server: StandInServer, first: int, last: int, resumed_at: int) -> dict:
    env = dict(os.environ, WANDB_BASE_URL=server.url, WANDB_API_KEY=DUMMY_KEY)
    env.pop("WANDB_MODE", None)
    out = subprocess.run([sys.executable, "-c", ATTEMPT, str(tmp_path), str(first), str(last), str(resumed_at)],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_resumed_online_from_an_older_checkpoint_sends_each_step_once(tmp_path):
    with StandInServer() as server:
        first = _attempt(tmp_path, server, 1, 10, -1)  # steps 1-10 reach W&B, then the task is requeued
        again = _attempt(tmp_path, server, 6, 15, 5)  # it resumes from its step-5 checkpoint: 6-10 are redone
        history = server.run(run_id("r", "map", 0)).history
    assert first["error"] is None and again["error"] is None
    assert again["held"] == 10, "W&B's own word on where the resumed run starts"
    assert [row["_step"] for row in history] == list(range(1, 16))
    assert [row["loss"] for row in history][5:10] == [6, 7, 8, 9, 10], "the first attempt's values, not the redo's"
