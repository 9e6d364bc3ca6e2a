"""Vision-language chat on Triton: images and text in, text out, one batched generation.

The steps are `serving.chat.UnaryChatModel`'s (shared with `llm`); the work is in
`backends.chat`. Contract and settings: docs/models/vlm.md.
"""

from __future__ import annotations

from backends.chat.settings import chat_params
from serving.chat import UnaryChatModel


class TritonPythonModel(UnaryChatModel):
    params = chat_params("smolvlm-256m-smollm2", images=True)
