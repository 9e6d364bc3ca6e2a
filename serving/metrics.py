"""Every Prometheus metric the models export beside Triton's own `nv_*`, defined once.

`CATALOGUE` is the one list of them: name, kind, labels, buckets and meaning. The glue makes its
`pb_utils.MetricFamily` objects from it (`Family`), docs/metrics.md lists it (a test compares
the two, and both with what a real server exports), and the Prometheus rules in
deploy/prometheus/ query it. Engines never see this module: they report what happened (token
times, decoding steps, audio lengths) and the glue records it here.

Histograms are native: the Python backend of tritonserver 2.51 has `MetricFamily.HISTOGRAM`
with per-metric buckets, exported as Prometheus `_bucket{le=...}`, `_sum` and `_count`.

Labels are bounded: `model`, plus `code` (Triton's error codes), `reason` (the chat finish
reasons) or `instance` (the model's instances, for what each instance holds) — never a session
id, a request id or free text. Every metric call is a round trip from the stub to the server,
so the glue adds up what it can per batch and calls once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

#: Seconds to a chat row's first token. Measured here: 171-182 ms p50 at concurrency 1,
#: about 1.2 s at 16 with batching, 30 s without (docs/benchmarks.md).
FIRST_TOKEN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds per output token after the first: 11-80 ms measured on CPU, less on a GPU.
TOKEN_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
#: Processing seconds per second of audio; 1 (real time) is a bound, for the RTF alert. The
#: TTS voices measured 0.07-0.15 (docs/benchmarks.md quotes the inverse, 7-15x real time).
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
#: Seconds to a stream's first audio: 0.37-0.59 s measured for a paragraph.
FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
#: Rows per engine call: the configs' max_batch_size is 8 or 16, a client may send more rows.
ROW_BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0)
#: 30-second Whisper windows per request (max_audio_seconds 1800 is 60 windows).
WINDOW_BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0)


@dataclass(frozen=True)
class Spec:
    """One metric family: what docs/metrics.md lists and what `Family` registers."""

    name: str
    kind: str  # COUNTER, GAUGE or HISTOGRAM
    help: str
    labels: tuple[str, ...] = ("model",)
    buckets: tuple[float, ...] = ()


# --- every model ---------------------------------------------------------------------------
ERRORS = Spec(
    "multimodal_request_errors_total",
    COUNTER,
    "Requests answered with an error, by model and Triton error code",
    ("model", "code"),
)
SPLITS = Spec(
    "multimodal_batch_splits_total",
    COUNTER,
    "Failed engine calls retried as two smaller ones, by model",
)
CANCELLED = Spec(
    "multimodal_requests_cancelled_total",
    COUNTER,
    "Requests whose client cancelled, before or while they ran",
)
BATCH_ROWS = Spec(
    "multimodal_batch_rows",
    HISTOGRAM,
    "Rows per engine call (continuous batching: per execute(), the rows handed to the running "
    "batch; its steps are in multimodal_decode_step_rows_total)",
    buckets=ROW_BUCKETS,
)
LOAD_SECONDS = Spec(
    "multimodal_model_load_seconds",
    GAUGE,
    "Seconds the instance took to load its engine (weights, quantization, warm-up)",
    ("model", "instance"),
)
FOOTPRINT = Spec(
    "multimodal_model_footprint_bytes",
    GAUGE,
    "Bytes of weights and buffers the instance's engine holds",
    ("model", "instance"),
)
# --- chat: vlm, vlm_stream, llm ------------------------------------------------------------
FIRST_TOKEN = Spec(
    "multimodal_time_to_first_token_seconds",
    HISTOGRAM,
    "Seconds from the start of the batch's execute() to a row's first token",
    buckets=FIRST_TOKEN_BUCKETS,
)
PER_TOKEN = Spec(
    "multimodal_time_per_output_token_seconds",
    HISTOGRAM,
    "Seconds per output token after the first, per row of two or more tokens",
    buckets=TOKEN_BUCKETS,
)
QUEUE_WAIT = Spec(
    "multimodal_chat_queue_seconds",
    HISTOGRAM,
    "Seconds a request waited from its execute() to its prompt pass (continuous batching: "
    "for room in the running batch)",
    buckets=FIRST_TOKEN_BUCKETS,
)
PROMPT_TOKENS = Spec(
    "multimodal_prompt_tokens_total",
    COUNTER,
    "Prompt tokens of the rows generated for (images and history included)",
)
GENERATED_TOKENS = Spec(
    "multimodal_generated_tokens_total",
    COUNTER,
    "Tokens generated, cancelled requests included",
)
COMPLETIONS = Spec(
    "multimodal_completions_total",
    COUNTER,
    "Chat rows finished, by finish reason (stop, length, cancelled)",
    ("model", "reason"),
)
GENERATION_CANCELLED = Spec(
    "multimodal_generation_cancelled_total",
    COUNTER,
    "Requests whose generation stopped because the client cancelled",
)
DECODE_STEPS = Spec(
    "multimodal_decode_steps_total",
    COUNTER,
    "Token steps of batched generation (the prompt pass's first token included)",
)
DECODE_STEP_ROWS = Spec(
    "multimodal_decode_step_rows_total",
    COUNTER,
    "Rows computed over all token steps: divided by the steps, the rows per step",
)
SESSIONS = Spec(
    "multimodal_sessions",
    GAUGE,
    "Chat sessions the instance holds history for",
    ("model", "instance"),
)
SESSION_BYTES = Spec(
    "multimodal_session_bytes",
    GAUGE,
    "Bytes of chat history the instance holds",
    ("model", "instance"),
)
# --- speech: stt, tts, tts_stream ----------------------------------------------------------
AUDIO_SECONDS = Spec(
    "multimodal_audio_seconds_total",
    COUNTER,
    "Seconds of audio: transcribed (stt, audio in) or synthesised (tts, audio out)",
)
REAL_TIME_FACTOR = Spec(
    "multimodal_real_time_factor",
    HISTOGRAM,
    "Per request: seconds from the start of execute() to its answer, per second of its "
    "audio (over 1: slower than real time)",
    buckets=RTF_BUCKETS,
)
WINDOWS = Spec(
    "multimodal_stt_windows",
    HISTOGRAM,
    "30-second Whisper windows a request's audio spans",
    buckets=WINDOW_BUCKETS,
)
FIRST_AUDIO = Spec(
    "multimodal_time_to_first_audio_seconds",
    HISTOGRAM,
    "Seconds from the start of execute() to a stream's first audio",
    buckets=FIRST_AUDIO_BUCKETS,
)

CATALOGUE: tuple[Spec, ...] = (
    ERRORS,
    SPLITS,
    CANCELLED,
    BATCH_ROWS,
    LOAD_SECONDS,
    FOOTPRINT,
    FIRST_TOKEN,
    PER_TOKEN,
    QUEUE_WAIT,
    PROMPT_TOKENS,
    GENERATED_TOKENS,
    COMPLETIONS,
    GENERATION_CANCELLED,
    DECODE_STEPS,
    DECODE_STEP_ROWS,
    SESSIONS,
    SESSION_BYTES,
    AUDIO_SECONDS,
    REAL_TIME_FACTOR,
    WINDOWS,
    FIRST_AUDIO,
)


class Family:
    """One metric family of `spec` for one model, its series made on first use.

    `fixed` labels are the same for every series this object makes (`model`, and `instance`
    for per-instance gauges); the others are given per call and must be exactly the spec's
    remaining labels, so no series with a label outside the spec can appear. The MetricFamily
    object is kept as long as its series: Triton deletes a family's series with it.

    A series is exported from its creation, at 0: one with no other labels is made here, and
    `known` values of the other label are made here too, so that `rate()` and `increase()`
    see a series' first counts (a counter that appears at 1 loses them).
    """

    def __init__(self, spec: Spec, model: str, known: Sequence[str] = (), **fixed: str) -> None:
        # Imported here, not at the top: the catalogue is read without a server too (the
        # docs and Prometheus rules tests).
        import triton_python_backend_utils as pb_utils

        self.spec = spec
        self._fixed = {"model": model, **fixed}
        self._free = tuple(label for label in spec.labels if label not in self._fixed)
        if set(self._fixed) - set(spec.labels):
            raise ValueError(f"{spec.name} has no label {sorted(set(fixed) - set(spec.labels))}")
        kind = getattr(pb_utils.MetricFamily, spec.kind.upper())
        self._family = pb_utils.MetricFamily(name=spec.name, description=spec.help, kind=kind)
        self._series: dict[tuple[str, ...], Any] = {}
        if not self._free:
            self.series()
        for value in known:
            (label,) = self._free
            self.series(**{label: value})

    def series(self, **labels: str) -> Any:
        """The pb_utils.Metric of these labels (the spec's labels other than the fixed ones)."""
        if labels.keys() != set(self._free):
            raise ValueError(f"{self.spec.name} takes the labels {self._free}, not {labels}")
        key = tuple(labels[name] for name in self._free)
        metric = self._series.get(key)
        if metric is None:
            buckets = list(self.spec.buckets) if self.spec.kind == HISTOGRAM else None
            metric = self._family.Metric(labels={**self._fixed, **labels}, buckets=buckets)
            self._series[key] = metric
        return metric

    def increment(self, value: float = 1, **labels: str) -> None:
        if value:
            self.series(**labels).increment(value)

    def set(self, value: float, **labels: str) -> None:
        self.series(**labels).set(value)

    def observe(self, value: float, **labels: str) -> None:
        self.series(**labels).observe(value)


class AudioMetrics:
    """What the speech models share: seconds of audio, and how fast compared with real time."""

    def __init__(self, model_name: str) -> None:
        self.seconds = Family(AUDIO_SECONDS, model_name)
        self.real_time_factor = Family(REAL_TIME_FACTOR, model_name)

    def record(self, audio_seconds: float, elapsed_seconds: float) -> None:
        """One request's audio and the seconds it took."""
        self.seconds.increment(audio_seconds)
        self.finished(audio_seconds, elapsed_seconds)

    def finished(self, audio_seconds: float, elapsed_seconds: float) -> None:
        """The real-time factor of a request whose audio was counted as it went (streams);
        none for empty audio."""
        if audio_seconds > 0:
            self.real_time_factor.observe(elapsed_seconds / audio_seconds)
