"""Submit limits read from sacctmgr/squeue output (the waves test runs them on Slurm)."""

from aistack.launch.slurm.limits import SubmitLimit, count_queued, parse_default_qos, parse_limit_column


def test_the_smallest_limit_of_a_sacctmgr_column_and_none_when_empty():
    assert parse_limit_column("60|\n") == 60
    assert parse_limit_column("\n200\n60\n\n") == 60  # one line per association: the tightest applies
    assert parse_limit_column("|\n\n") is None


def test_default_qos_and_jobs_queued_per_qos():
    assert parse_default_qos("\nlimited\nnormal\n") == "limited"
    assert parse_default_qos("") is None
    squeue = "limited\nlimited\nnormal\n\nlimited\n"
    assert count_queued(squeue, "limited") == 3 and count_queued(squeue, "normal") == 1 and count_queued(squeue) == 4


def test_a_limit_says_which_limit_it_is():
    assert SubmitLimit("limited", 60, None).describe() == "QOS limited MaxSubmitJobsPerUser=60"
    assert SubmitLimit(None, None, 500).describe() == "association MaxSubmitJobs=500"
    assert not SubmitLimit("normal", None, None).limited and SubmitLimit("normal", None, None).room() is None
