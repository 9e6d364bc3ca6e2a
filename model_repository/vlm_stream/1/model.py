"""Streaming vision-language chat on Triton (decoupled): text as it is generated.

Same engine, settings and inputs as `vlm`; each request gets one response per new piece of
text (output `text`), then a final response flagged COMPLETE_FINAL that carries
`finish_reason`, `prompt_tokens` and `completion_tokens` (and an empty `text`). A client that
cancels stops its row's generation at the next token. Contract: docs/models/vlm_stream.md.
"""

from __future__ import annotations

from dataclasses import replace

from backends.chat.service import ChatRow, ChatService
from backends.chat.settings import chat_params
from serving.adapters import StreamingModel
from serving.chat import ChatModel, StreamSink, completion_tensors
from serving.protocols import Request
from serving.streaming import Stream
from shared.errors import invalid


class TritonPythonModel(ChatModel, StreamingModel[ChatService, ChatRow]):
    """All requests of one execute() stream from one batched generation."""

    params = chat_params("smolvlm-256m-smollm2", images=True)

    def parse(self, request: Request) -> list[ChatRow]:
        chats = self.chat_requests(request)
        if len(chats) != 1:
            raise invalid(
                f"input 'prompt' has {len(chats)} rows; a streaming request carries one prompt"
            )
        return [self.engine.prepare(chats[0])]

    def run(self, rows: list[ChatRow], streams: list[Stream]) -> None:
        completions = self.engine.run(rows, [StreamSink(s) for s in streams])
        self.record(completions)
        for stream, completion in zip(streams, completions, strict=True):
            # The text went out piece by piece; the final response carries the summary.
            stream.finish(completion_tensors([replace(completion, text="")]))
