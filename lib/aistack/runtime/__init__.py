"""What runs on a node: the node entry (node.py) and the task runner (task.py) that runs
one task of a job and keeps its markers, checkpoints and W&B run."""

import os
import sys

# Megatron-LM and most cluster tooling use SIGUSR1 for "save, the time limit is near";
# submitit defaults to USR2. Set before submitit is imported so both the rendered
# `#SBATCH --signal` and the handler on the node agree.
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")

# submitit reads the variable once, when its job_environment module is imported: correct
# it if that already happened. Not imported here otherwise: commands that never submit
# (status, logs, plan) need not pay for it.
_job_environment = sys.modules.get("submitit.core.job_environment")
if _job_environment is not None:
    _job_environment.JobEnvironment.USR_SIG = os.environ["SUBMITIT_PREEMPT_SIGNAL"]
