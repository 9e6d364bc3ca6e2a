"""`python -m tools.loadtest` (what scripts/loadtest runs)."""

import sys

from .cli import main

sys.exit(main())
