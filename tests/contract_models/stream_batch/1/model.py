"""Streams `count` pieces per request through serving.streaming, all requests in one `run` call."""

import numpy as np
import triton_python_backend_utils as pb_utils

from serving import tensors
from serving.errors import ErrorCounter, SplitCounter
from serving.streaming import Stream, run_stream_batch
from shared.errors import invalid


def _int(name: str, value: int) -> object:
    return pb_utils.Tensor(name, np.array([[value]], dtype=np.int32))


class TritonPythonModel:
    def initialize(self, args):
        self.errors = ErrorCounter(args["model_name"])
        self.splits = SplitCounter(args["model_name"])
        self.calls = 0

    def execute(self, requests):
        run_stream_batch(requests, self._parse, self._run, "stream_batch", self.errors, self.splits)

    def _parse(self, request):
        count = tensors.number_column(request, "count", 1, int)[0]
        if count < 0:
            raise invalid(f"input 'count' is {count}; it must be at least 0")
        return [count]

    def _run(self, counts: list[int], streams: list[Stream]) -> None:
        self.calls += 1
        if 99 in counts:
            raise RuntimeError("engine failure")
        for step in range(max(counts, default=0)):
            if step == 1 and 77 in counts:
                raise RuntimeError("engine failure after the first pieces")
            for count, stream in zip(counts, streams, strict=True):
                if step < count and not stream.cancelled():
                    stream.send([_int("piece", step)])
        for count, stream in zip(counts, streams, strict=True):
            if count % 2:  # odd counts finish themselves with data; even ones are left open
                stream.finish([_int("total", count)])
