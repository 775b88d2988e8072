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


def test_the_lookup_reads_both_sacctmgr_answers_for_the_qos_or_the_default_one(monkeypatch, tmp_path):
    from aistack.launch.slurm import limits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing kept from another test

    answers = {"assoc": "200|limited\n|\n", "qos": "normal|\nlimited|60\nurgent|5\n"}
    asked = []

    def sacctmgr(cmd):
        asked.append(cmd)
        return answers[cmd[4]]

    monkeypatch.setattr(limits, "_run", sacctmgr)
    lookup = limits.LimitLookup(None)
    assert lookup.limit(None) == SubmitLimit("limited", 60, 200), "the association's default QOS"
    assert lookup.limit("urgent") == SubmitLimit("urgent", 5, 200)
    assert lookup.limit("normal") == SubmitLimit("normal", None, 200)
    assert len(asked) == 2, "two questions per launch, whatever the jobs' QOS"
    assert limits.LimitLookup(500).limit("urgent") == SubmitLimit(None, None, 500), "the profile's limit, no question"
    assert len(asked) == 2


def test_the_answers_are_kept_a_while_per_cluster_and_dropped_after_a_refusal(monkeypatch, tmp_path):
    """The first job of a launch waits for sacctmgr (half a second): a launch a few minutes
    after another reuses its answers; another cluster (slurm.conf), time, or a submission
    Slurm refused asks again."""
    import os

    from aistack.launch.slurm import limits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=a\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    asked = []
    monkeypatch.setattr(limits, "_run", lambda cmd: asked.append(cmd) or {"assoc": "|limited\n", "qos": "limited|60\n"}[cmd[4]])

    assert limits.LimitLookup(None).limit(None) == SubmitLimit("limited", 60, None) and len(asked) == 2
    assert limits.LimitLookup(None).limit(None) == SubmitLimit("limited", 60, None) and len(asked) == 2, "kept"
    limits.forget_cached_answers()
    limits.LimitLookup(None).limit(None)
    assert len(asked) == 4, "asked again after a refusal"
    os.utime(conf, ns=(1, 1))  # the cluster was rebuilt
    limits.LimitLookup(None).limit(None)
    assert len(asked) == 6
    monkeypatch.setattr(limits.time, "time", lambda: 1e12)  # long after
    limits.LimitLookup(None).limit(None)
    assert len(asked) == 8
    monkeypatch.setattr(limits, "_run", lambda cmd: None)  # sacctmgr unreadable: nothing kept
    limits.forget_cached_answers()
    assert limits.LimitLookup(None).limit(None) == SubmitLimit(None, None, None)
    assert not (tmp_path / "cache" / "aistack" / "submit-limits.json").exists()


def test_a_cache_file_that_is_not_ours_is_asked_past(monkeypatch, tmp_path):
    from aistack.launch.slurm import limits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=a\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    cache = tmp_path / "aistack" / "submit-limits.json"
    cache.parent.mkdir()
    key = limits._cache_key(limits.user_name())
    for text in ("not json", "[1, 2]", '{"%s": {"at": %f}}' % (key, limits.time.time())):
        cache.write_text(text)
        assert limits.read_cached_answers(limits.user_name()) is None, text
