"""`python -m openai_api`: serve the door with uvicorn (settings from OPENAI_* variables).

uvicorn stops on SIGINT or SIGTERM; open streams get a few seconds to finish, then their
Triton calls are cancelled with them.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from openai_api.app import create_app
from openai_api.settings import SettingError, Settings


def main() -> int:
    try:
        settings = Settings.from_environment()
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=5,
        # httptools' C parser instead of h11's pure Python: about 2 ms less per request
        # (docs/benchmarks.md, the OpenAI door).
        http="httptools",
        server_header=False,
        access_log=False,  # the door's metrics count requests; a line per request costs latency
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
