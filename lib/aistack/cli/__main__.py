"""`python -m aistack.cli`: the `aistack` command."""

import sys

from aistack.cli import main

sys.exit(main())
