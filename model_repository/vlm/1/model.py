"""Vision-language chat on Triton: parse requests, run them as one batch, respond per request.

The work is in `backends.vlm_chat.ChatService` (validation, sessions) over
`backends.vlm.VlmEngine` (one batched generate()); this file maps Triton tensors to rows and
back. Inputs, outputs and settings are documented in README.md.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from backends.vlm_chat import ChatRow, ChatService, chat_params
from shared import chat_triton, triton
from shared.chat import Completion
from shared.errors import ErrorCode, RequestError
from shared.loading import plan_load

PARAMS = chat_params("smolvlm-256m-smollm2", images=True)


class TritonPythonModel:
    """One batched generate() per execute(); each request keeps its own sampling options."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        plan = plan_load(args, PARAMS)
        self.service = ChatService.load(plan)
        self.errors = triton.ErrorCounter(self.name)
        self.metrics = chat_triton.GenerationMetrics(self.name)
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {plan.model_dir}: {self.service.engine.describe()}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return triton.run_batch(
            requests, self._parse, self._run, self._respond, self.name, self.errors
        )

    def _parse(self, request: Any) -> list[tuple[ChatRow, chat_triton.RequestSink]]:
        sink = chat_triton.RequestSink(request)
        chats = chat_triton.read_chat_requests(request, self.service.settings)
        return [(self.service.prepare(chat), sink) for chat in chats]

    def _run(self, rows: list[tuple[ChatRow, chat_triton.RequestSink]]) -> list[Completion]:
        completions = self.service.run([row for row, _ in rows], [sink for _, sink in rows])
        self.metrics.record(completions)
        return completions

    def _respond(self, request: Any, completions: list[Completion]) -> Any:
        if any(c.finish_reason == "cancelled" for c in completions):
            return triton.error_response(
                RequestError("the request was cancelled", ErrorCode.CANCELLED)
            )
        return pb_utils.InferenceResponse(
            output_tensors=chat_triton.completion_tensors(completions)
        )
