"""Moved to aistack.runtime.node. Kept for one release: sbatch scripts queued before the
move run `python -m aistack.launch.node TASKS_FILE`."""

import sys

from aistack.runtime.node import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
