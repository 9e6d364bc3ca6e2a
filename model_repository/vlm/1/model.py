"""Vision-language chat on Triton: parse requests, run them as one batch, respond per request.

The work is in `backends.vlm_chat.ChatService` (validation, sessions) over
`backends.vlm.VlmEngine` (one batched generation); the Triton side, shared with `llm`, is
`shared.chat_triton.UnaryChatModel`. Inputs, outputs and settings are documented in README.md.
"""

from __future__ import annotations

from backends.vlm_chat import ChatService, chat_params
from shared.chat_triton import UnaryChatModel

PARAMS = chat_params("smolvlm-256m-smollm2", images=True)


class TritonPythonModel(UnaryChatModel):
    """One batched generation per execute(); each request keeps its own sampling options."""

    params = PARAMS
    load_service = staticmethod(ChatService.load)
