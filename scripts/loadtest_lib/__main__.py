"""`python -m scripts.loadtest_lib` (what scripts/loadtest runs)."""

import sys

from .cli import main

sys.exit(main())
