"""Recipe -> submitit jobs: plans, local and Slurm executors, sbatch rendering, status."""

import os

# Megatron-LM and most cluster tooling use SIGUSR1 for "save, the time limit is near";
# submitit defaults to USR2. Set before submitit is imported so both the rendered
# `#SBATCH --signal` and the handler on the node agree.
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")

import submitit.core.job_environment as _job_environment  # noqa: E402

_job_environment.JobEnvironment.USR_SIG = os.environ["SUBMITIT_PREEMPT_SIGNAL"]
