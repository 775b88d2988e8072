"""Slurm's accounting output, as sacct prints it, parsed into one state per task."""

from __future__ import annotations

from aistack.launch.slurm.sacct import parse_sacct

# Captured from `sacct -X -n -P -o JobID,State -j 41,42,43,44` on the local cluster.
CAPTURED = """\
41_0|COMPLETED
41_1|FAILED
41_[2-4,7%2]|PENDING
42|CANCELLED by 0
43|RUNNING
44_5|OUT_OF_MEMORY
not a row
45|
"""


def test_array_ranges_expand_and_reasons_are_dropped():
    states = parse_sacct(CAPTURED)
    assert states == {
        "41_0": "COMPLETED", "41_1": "FAILED", "41_2": "PENDING", "41_3": "PENDING", "41_4": "PENDING",
        "41_7": "PENDING", "42": "CANCELLED", "43": "RUNNING", "44_5": "OUT_OF_MEMORY", "45": "UNKNOWN",
    }


def test_empty_output_is_no_state():
    assert parse_sacct("") == {}


def test_a_refused_submission_names_the_limit_and_what_to_change():
    from aistack.launch.slurm.executor import refusal_message

    # What sbatch prints when a QOS's MaxSubmitJobsPerUser is reached (Slurm 22.05).
    said = ("sbatch: error: QOSMaxSubmitJobPerUserLimit\n"
            "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
            "(job submit limit, user's size and/or time limits)\n")
    message = refusal_message("run-abc/filter", 500, said)
    assert message.startswith("Slurm refused run-abc/filter (500 tasks): sbatch: error: QOSMaxSubmitJobPerUserLimit")
    assert "every array task counts" in message and "rerun" in message
    assert "check `partition`" in refusal_message("r/j", 1, "sbatch: error: invalid partition specified: x")
