"""`python -m multimodal_client`: the command line (multimodal_client/cli.py)."""

import sys

from multimodal_client.cli import main

sys.exit(main())
