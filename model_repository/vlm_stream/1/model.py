"""Streaming vision-language chat on Triton (decoupled): text as it is generated.

Same engine, settings and inputs as `vlm`; each request gets one response per new piece of
text (output `text`), then a final response flagged COMPLETE_FINAL that carries
`finish_reason`, `prompt_tokens` and `completion_tokens` (and an empty `text`). A client that
cancels stops its row's generation at the next token. README.md documents the contract.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import triton_python_backend_utils as pb_utils

from backends.vlm_chat import ChatRow, ChatService, chat_params
from shared import chat_triton, triton
from shared.errors import invalid
from shared.loading import plan_load
from shared.streaming import Stream, run_stream_batch

PARAMS = chat_params("smolvlm-256m-smollm2", images=True)


class TritonPythonModel:
    """All requests of one execute() stream from one batched generation."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        plan = plan_load(args, PARAMS)
        self.service = ChatService.load(plan)
        self.errors = triton.ErrorCounter(self.name)
        self.metrics = chat_triton.GenerationMetrics(self.name)
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {plan.model_dir}: {self.service.engine.describe()}"
        )

    def execute(self, requests: list[Any]) -> None:
        run_stream_batch(requests, self._parse, self._run, self.name, self.errors)

    def _parse(self, request: Any) -> list[ChatRow]:
        chats = chat_triton.read_chat_requests(request, self.service.settings)
        if len(chats) != 1:
            raise invalid(
                f"input 'prompt' has {len(chats)} rows; a streaming request carries one prompt"
            )
        return [self.service.prepare(chats[0])]

    def _run(self, rows: list[ChatRow], streams: list[Stream]) -> None:
        completions = self.service.run(rows, [chat_triton.StreamSink(s) for s in streams])
        self.metrics.record(completions)
        for stream, completion in zip(streams, completions, strict=True):
            # The text went out piece by piece; the final response carries the summary.
            stream.finish(chat_triton.completion_tensors([replace(completion, text="")]))
