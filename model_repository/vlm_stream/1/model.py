"""Streaming vision-language chat on Triton (decoupled): text as it is generated.

Same engine, settings and inputs as `vlm`; each request gets one response per new piece of
text (output `text`), then a final response flagged COMPLETE_FINAL that carries
`finish_reason`, `prompt_tokens` and `completion_tokens` (and an empty `text`). A client that
cancels stops its row's generation at the next token. The steps are
`serving.chat.StreamingChatModel`'s. Contract: docs/models/vlm_stream.md.
"""

from __future__ import annotations

from backends.chat.settings import chat_params
from serving.chat import StreamingChatModel


class TritonPythonModel(StreamingChatModel):
    params = chat_params("smolvlm-256m-smollm2")
