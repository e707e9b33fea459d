"""`python -m netsched_edge.fleet`: see netsched_edge/fleet/cli.py."""

import sys

from .cli import main

sys.exit(main())
