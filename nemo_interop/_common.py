"""Shared set-up for the converters (run inside .venv-nemo)."""
import contextlib
import os
import sys

# A conversion is one process. Inside a Slurm job, Lightning would otherwise adopt the job's
# SLURM_* rank/world size for the gloo process group that MegatronStrategy sets up.
for _k in [k for k in os.environ if k.startswith("SLURM_")]:
    del os.environ[_k]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_patches  # noqa: E402,F401  (must come before nemo builds any model)


@contextlib.contextmanager
def stdout_to_stderr():
    """NeMo prints progress and a folder tree on stdout; keep stdout for our one JSON line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def versions():
    import megatron.core
    import nemo
    import torch

    return {"nemo": nemo.__version__, "megatron_core": megatron.core.__version__, "torch": torch.__version__}
