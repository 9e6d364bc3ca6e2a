"""Keep the server log readable: a warning that repeats on every request is shown once.

Libraries warn per call: transformers about generation arguments on every `generate()`,
bitsandbytes int8 about a dtype cast on every matmul (hundreds of lines per request). In a
server that is noise that buries real problems, so each distinct message is let through once.
"""

from __future__ import annotations

import logging
import warnings

_MAX_REMEMBERED = 1024


class OncePerMessage(logging.Filter):
    """Let each distinct log message through once (bounded memory)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        if len(self._seen) < _MAX_REMEMBERED:
            self._seen.add(message)
        return True


_installed = False


def quiet_repeated_warnings() -> None:
    """Show each repeated library warning once per process; idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers")  # configures the library's handler
    once = OncePerMessage()
    # transformers logs through its own handler; other libraries' records end at the root
    # logger's handlers, or at logging.lastResort when the root has none.
    handlers = [*logging.getLogger("transformers").handlers, *logging.getLogger().handlers]
    for handler in [*handlers, logging.lastResort]:
        if handler is not None:
            handler.addFilter(once)
    # bitsandbytes int8 logs its cast on every matmul: filtered where the record is made too.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(once)
    # Python warnings (torch deprecations and the like): once per message.
    warnings.filterwarnings("once", category=DeprecationWarning)
    warnings.filterwarnings("once", category=FutureWarning)
