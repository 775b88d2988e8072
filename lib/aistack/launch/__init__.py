"""Recipe -> stages -> plans -> the profile's executor -> jobs, and where a run stands.

The preemption signal is set where the task runner lives (aistack.runtime), before
submitit is imported: the rendered `#SBATCH --signal` and the handler on the node agree.
"""

import aistack.runtime  # noqa: F401  (sets SUBMITIT_PREEMPT_SIGNAL)
