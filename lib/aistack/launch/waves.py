"""Moved to aistack.launch.slurm.waves (the continuation to aistack.launch.launcher). Kept
for one release: follow-up jobs queued before the move run `python -m aistack.launch.waves`."""

import sys

from aistack.launch.launcher import continue_launch

if __name__ == "__main__":
    sys.exit(continue_launch(sys.argv[1]))
