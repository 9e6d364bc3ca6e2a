"""Text chat on Triton: the vision-language engine and contract, without images.

It serves the same checkpoint as `vlm` (a separate instance with its own settings): the same
inputs and outputs less `images`; image parts in a prompt are refused. The Triton side is
`shared.chat_triton.UnaryChatModel`, shared with `vlm`. README.md documents the contract.
"""

from __future__ import annotations

from backends.vlm_chat import ChatService, chat_params
from shared.chat_triton import UnaryChatModel

PARAMS = chat_params("smolvlm-256m-smollm2", images=False)


class TritonPythonModel(UnaryChatModel):
    """One batched generation per execute(); each request keeps its own sampling options."""

    params = PARAMS
    load_service = staticmethod(ChatService.load)
