"""The load-test suite without a server: input data from every model's config, validation,
what perf_analyzer prints and writes, the statistics, the repository variants, and the shape
of the package itself (no import cycles; the files other interpreters run import nothing of
the project)."""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from tests.harness import config as harness_config
from tests.harness import validation
from tests.speech import espeak_available
from tools.loadtest import content, inputs, loadgen, local, perf, stats
from tools.loadtest.content import ContentOptions, Sample

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
SMALL = ContentOptions(samples=3, max_new_tokens=8, image_size=96, images_per_prompt=1)


def config_of(model: str) -> ModelConfig:
    model_dir = REPOSITORY / model
    if not (model_dir / "config.pbtxt").is_file():
        pytest.skip(f"model_repository/{model}/config.pbtxt does not exist yet")
    return inputs.read_config(model_dir)


def step_tensors(config: ModelConfig, step: dict) -> dict[str, np.ndarray]:
    """What perf_analyzer sends for one data step: the tensors decoded from the JSON, with the
    batch dimension it adds (-b 1) when the model batches."""
    tensors = {}
    for name, entry in step.items():
        if "b64" in entry:
            blob, items, offset = base64.b64decode(entry["b64"]), [], 0
            while offset < len(blob):
                (length,) = struct.unpack_from("<I", blob, offset)
                items.append(blob[offset + 4 : offset + 4 + length])
                offset += 4 + length
            array = np.empty(len(items), dtype=np.object_)
            array[:] = items
        else:
            kind = next(t for t in config.input if t.name == name)
            array = np.array(entry["content"], dtype=inputs.NUMPY[inputs.type_name(kind)])
        array = array.reshape(entry["shape"])
        tensors[name] = array[np.newaxis] if config.max_batch_size > 0 else array
    return tensors


@pytest.mark.parametrize("model", sorted(content.MODELS))
def test_input_data_for_every_model_passes_the_servers_checks(model: str) -> None:
    """Data built from the model's config.pbtxt and its content generator is what the server
    accepts: every step passes the server's request checks (names, types, shapes, batch)."""
    config = config_of(model)
    generator = content.generator_for(config)
    if generator.name == "speech" and not espeak_available():
        pytest.skip("espeak-ng makes the speech")
    samples = generator.make(config, SMALL)
    data = inputs.build_data(config, samples)
    inputs.validate_data(config, data)
    completed = harness_config.complete(config, REPOSITORY / model)
    assert len(data["data"]) == SMALL.samples
    required = {t.name for t in config.input if not t.optional}
    for step in data["data"]:
        assert required <= set(step)
        validation.check_request(completed, step_tensors(config, step), [], "")
    # The same samples as client tensors (the load generator, the in-process harness).
    for sample in samples:
        validation.check_request(completed, inputs.client_tensors(config, sample), [], "")


def test_speech_content_is_real_audio() -> None:
    if not espeak_available():
        pytest.skip("espeak-ng makes the speech")
    config = config_of("stt")
    samples = content.generator_for(config).make(config, SMALL)
    step = inputs.build_data(config, samples)["data"][1]
    (wav,) = step_tensors(config, step)["audio"].reshape(-1)
    audio, rate = sf.read(io.BytesIO(wav))
    assert rate == content.CLIP_RATE
    assert 1.0 < len(audio) / rate < 10.0
    assert np.abs(audio).max() > 0.1  # speech, not silence
    assert len({s.inputs["audio"] for s in samples}) == len(samples)  # distinct clips


def test_prompts_carry_drawn_images_only_where_the_model_takes_images() -> None:
    from PIL import Image

    with_images = text_format.Parse(
        'name: "vlm" max_batch_size: 4 input [{ name: "prompt" data_type: TYPE_STRING dims: [1] },'
        ' { name: "images" data_type: TYPE_STRING dims: [-1] optional: true },'
        ' { name: "max_new_tokens" data_type: TYPE_INT32 dims: [1] optional: true }]',
        ModelConfig(),
    )
    text_only = text_format.Parse(
        'name: "llm" max_batch_size: 4 input [{ name: "prompt" data_type: TYPE_STRING dims: [1] }]',
        ModelConfig(),
    )
    options = ContentOptions(samples=2, image_size=80, images_per_prompt=2)
    step = inputs.build_data(with_images, content.prompts(with_images, options))["data"][0]
    assert step["images"]["shape"] == [2] and step["max_new_tokens"]["content"] == [32]
    for data in step_tensors(with_images, step)["images"].reshape(-1):
        assert Image.open(io.BytesIO(data)).size == (80, 80)
    plain = inputs.build_data(text_only, content.prompts(text_only, options))["data"][0]
    assert set(plain) == {"prompt"}  # no images, and max_new_tokens dropped: not in the config
    prompt = step_tensors(text_only, plain)["prompt"].reshape(-1)[0].decode()
    assert prompt in content.TEXT_PROMPTS


def test_a_new_model_needs_only_a_generator() -> None:
    """Unknown names pick the generator that provides their required inputs, or say what is
    missing and where to add it."""
    voice = text_format.Parse(
        'name: "my_voice" input [{ name: "text" data_type: TYPE_STRING dims: [1] },'
        ' { name: "voice" data_type: TYPE_STRING dims: [1] optional: true }]',
        ModelConfig(),
    )
    assert content.generator_for(voice).name == "sentences"
    odd = text_format.Parse(
        'name: "odd" input [{ name: "tokens" data_type: TYPE_INT64 dims: [-1] }]', ModelConfig()
    )
    with pytest.raises(LookupError, match=r"no content generator for model 'odd'.*tokens"):
        content.generator_for(odd)


STT_LIKE = text_format.Parse(
    'name: "m" max_batch_size: 8 input ['
    '{ name: "audio" data_type: TYPE_STRING dims: [1] },'
    '{ name: "max_new_tokens" data_type: TYPE_INT32 dims: [1] optional: true },'
    '{ name: "temperature" data_type: TYPE_FP32 dims: [1] optional: true }]',
    ModelConfig(),
)


def good_step() -> dict:
    return inputs.build_data(
        STT_LIKE, [Sample({"audio": b"RIFF1234", "max_new_tokens": 5, "temperature": 0.5}, "")]
    )["data"][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("audio"), r"required inputs \['audio'\] are missing"),
        (lambda s: s.update(extra={"content": [1], "shape": [1]}), r"\['extra'\] are not in"),
        (lambda s: s["audio"].update(shape=[2]), r"'audio': shape \[2\] does not fit.*\[1\]"),
        (lambda s: s["max_new_tokens"].update(content=[1.5]), r"'max_new_tokens' \(TYPE_INT32\)"),
        (lambda s: s["temperature"].update(content=[1, 2]), r"'temperature' needs 1 values"),
        (
            lambda s: s["audio"].update(b64=base64.b64encode(b"\x10\x00\x00\x00ab").decode()),
            r"'audio': bad BYTES tensor: element of 16 bytes runs past the end",
        ),
        (lambda s: s["audio"].pop("b64"), r"BYTES input 'audio' must be given as 'b64'"),
    ],
)
def test_validation_names_the_input_and_the_problem(change, message: str) -> None:
    step = good_step()
    inputs.validate_data(STT_LIKE, {"data": [step]})
    change(step)
    with pytest.raises(ValueError, match=message):
        inputs.validate_data(STT_LIKE, {"data": [step]})


def test_missing_required_content_is_an_error_naming_the_input() -> None:
    with pytest.raises(ValueError, match=r"requires input 'audio'.*gives: text"):
        inputs.build_data(STT_LIKE, [Sample({"text": "hello"}, "")])


# Recorded from perf_analyzer 2.50 (tritonclient's wheel) against this project's stt model over
# gRPC, and against tests/contract_models/stream_batch (decoupled) with --streaming.
STDOUT_STT = """ Successfully read data for 1 stream/streams with 2 step/steps.
*** Measurement Settings ***
  Batch size: 1
  Service Kind: TRITON
  Sending 3 benchmark requests
  Using synchronous calls for inference

Request concurrency: 1
  Client:
    Request count: 3
    Throughput: 0.249954 infer/sec
    Avg latency: 3929851 usec (standard deviation 887709 usec)
    p50 latency: 3632910 usec
    p90 latency: 4927967 usec
    p95 latency: 4927967 usec
    p99 latency: 4927967 usec
    Avg gRPC time: 3929816 usec ((un)marshal request/response 66 usec + response wait 3929750 usec)
  Server:
    Inference count: 3
    Execution count: 3
    Successful request count: 3
    Avg request latency: 3929567 usec (overhead 4 usec + queue 20168 usec + compute input 137 usec + compute infer 3908532 usec + compute output 725 usec)

Inferences/Second vs. Client Average Batch Latency
Concurrency: 1, throughput: 0.249954 infer/sec, latency 3929851 usec
"""
CSV_STT = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait\n"
    "1,0.249954,62,221,20168,137,3908532,725,4,3632910,4927967,4927967,4927967,3929851,66,3929750\n"
)
STDOUT_STREAM = """  Detected decoupled model, using the first response for measuring latency

Request concurrency: 2
  Client:
    Request count: 6
    Throughput: 5.99549 infer/sec
    Response Throughput: 23.9819 infer/sec
    Avg latency: 11112 usec (standard deviation 8503 usec)
    p50 latency: 15430 usec
    p90 latency: 22617 usec
    p95 latency: 22617 usec
    p99 latency: 22617 usec

  Server:
    Inference count: 6
"""


def test_parses_perf_analyzers_stdout() -> None:
    (block,) = perf.parse_stdout(STDOUT_STT)
    assert block == {
        "concurrency": 1,
        "request_count": 3,
        "throughput": 0.249954,
        "avg_us": 3929851,
        "p50_us": 3632910,
        "p90_us": 4927967,
        "p95_us": 4927967,
        "p99_us": 4927967,
    }
    (stream,) = perf.parse_stdout(STDOUT_STREAM)
    assert stream["concurrency"] == 2 and stream["response_throughput"] == 23.9819
    assert perf.parse_stdout(STDOUT_STT + STDOUT_STREAM)[1]["p50_us"] == 15430


def test_parses_perf_analyzers_csv(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    path.write_text(CSV_STT, encoding="utf-8")
    (row,) = perf.parse_csv(path)
    assert row["Concurrency"] == 1 and row["Inferences/Second"] == 0.249954
    assert row["Server Queue"] == 20168 and row["p99 latency"] == 4927967


def test_reads_the_profile_export(tmp_path: Path) -> None:
    """Timestamps per request and per response; raw request bytes do not break the reader."""
    export = {
        "experiments": [
            {
                "experiment": {"mode": "concurrency", "value": 2},
                "requests": [
                    {
                        "timestamp": 1_000_000_000,
                        "request_inputs": {"audio": "RIFF\u00ba\u00ff"},
                        "response_timestamps": [1_100_000_000, 1_300_000_000],
                        # A text chunk, then the final response with the count.
                        "response_outputs": [
                            {"text": "Hel", "completion_tokens": 1326583296},
                            {"text": "", "completion_tokens": 7},
                        ],
                    },
                    {
                        "timestamp": 1_050_000_000,
                        "request_inputs": {"audio": "x"},
                        "response_timestamps": [1_250_000_000],
                        "response_outputs": [{"completion_tokens": 5}],
                    },
                ],
                "window_boundaries": [],
            }
        ]
    }
    path = tmp_path / "export.json"
    path.write_bytes(json.dumps(export, ensure_ascii=False).encode("latin-1"))
    timings, outputs = perf.read_export(path)
    assert [t.responses_ns for t in timings] == [(1_100_000_000, 1_300_000_000), (1_250_000_000,)]
    assert perf.generated_tokens(outputs) == 12
    assert perf.generated_tokens([[{"completion_tokens": 3}], [{"text": "no count"}]]) is None
    assert perf.generated_tokens([[{"completion_tokens": 2**31 - 5}]]) is None
    summary = stats.summarize(timings)
    assert summary["requests"] == 2 and summary["seconds"] == pytest.approx(0.3)
    assert summary["throughput"] == pytest.approx(2 / 0.3)
    assert summary["p50_ms"] == pytest.approx(200) and summary["p99_ms"] == pytest.approx(300)
    assert summary["first_response_p50_ms"] == pytest.approx(100)
    assert summary["responses_per_request"] == 1.5


def test_summarize_refuses_requests_without_a_response() -> None:
    with pytest.raises(ValueError, match="1 of 2 requests got no response"):
        stats.summarize([stats.Timing(0, (5,)), stats.Timing(1, ())])


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [stats.percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert stats.percentile([3.0], 99) == 3.0


def test_perf_analyzer_command(tmp_path: Path) -> None:
    endpoint = perf.Endpoint("grpc", "host:8001")
    settings = perf.PerfSettings(requests=16, rounds=3, shared_memory="system")
    cmd = perf.command(
        "vlm_stream", endpoint, tmp_path / "d.json", 8, settings, tmp_path / "r.csv",
        tmp_path / "e.json", streaming=True,
    )  # fmt: skip
    text = " ".join(cmd)
    assert "-m vlm_stream -u host:8001 -i grpc" in text
    assert "--concurrency-range 8:8" in text and "--request-count 24" in text
    assert "--streaming" in cmd and "--shared-memory system" in text
    windows = perf.command(
        "stt", endpoint, tmp_path / "d.json", 1, perf.PerfSettings(requests=0),
        tmp_path / "r.csv", tmp_path / "e.json", streaming=False,
    )  # fmt: skip
    assert "--measurement-interval" in windows and "--request-count" not in windows
    assert "--streaming" not in windows and "--shared-memory" not in windows


def test_poisson_levels_ask_perf_analyzer_for_a_request_rate(tmp_path: Path) -> None:
    settings = perf.PerfSettings(requests=24, poisson=True)
    cmd = perf.command(
        "llm", perf.Endpoint("grpc", "host:8001"), tmp_path / "d.json", 2.5, settings,
        tmp_path / "r.csv", tmp_path / "e.json", streaming=False,
    )  # fmt: skip
    text = " ".join(cmd)
    assert "--request-rate-range 2.5:2.5 --request-distribution poisson" in text
    assert "--concurrency-range" not in text and "--request-count 24" in text


def test_the_open_loop_sends_on_schedule_whatever_the_answers() -> None:
    """Poisson arrivals do not wait for answers (a closed loop of one keeps one in flight)."""

    class Slow:
        def __init__(self) -> None:
            self.in_flight = self.most = 0
            self.sent: list[int] = []

        async def send(self, index: int) -> None:
            self.sent.append(index)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.2)
            self.in_flight -= 1

        async def close(self) -> None:
            pass

    target = Slow()
    level = asyncio.run(loadgen.open_loop(target, 3, rate=200.0, requests=12))
    assert len(level.timings) == 12 and sorted(target.sent) == sorted(i % 3 for i in range(12))
    assert target.most > 1


def test_repository_copy_without_batching_changes_only_dynamic_batching(tmp_path: Path) -> None:
    shipped = inputs.read_config(REPOSITORY / "stt")
    assert shipped.HasField("dynamic_batching")
    repo = local.repository_copy(REPOSITORY, ["stt"], tmp_path / "repo", batching=False)
    variant = inputs.read_config(repo / "stt")
    assert not variant.HasField("dynamic_batching")
    shipped.ClearField("dynamic_batching")
    assert variant == shipped
    assert (repo / "stt" / "1" / "model.py").read_bytes() == (
        REPOSITORY / "stt" / "1" / "model.py"
    ).read_bytes()
    with pytest.raises(LookupError, match="'nope' has no config.pbtxt"):
        local.repository_copy(REPOSITORY, ["nope"], tmp_path / "other")


def test_env_name_follows_the_models_settings_convention() -> None:
    assert local.env_name("stt", "quantization") == "STT_QUANTIZATION"
    assert local.env_name("vlm_stream", "model_path") == "VLM_STREAM_MODEL_PATH"


def test_openai_chat_target_sends_greedy_chat_and_counts_tokens() -> None:
    """The peer's client: one user message per prompt, greedy, max_tokens; tokens/s and the
    answers come from the OpenAI response (usage.completion_tokens, the message content)."""
    import asyncio

    from aiohttp import web

    from tools.loadtest import loadgen

    bodies: list[dict] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        prompt = body["messages"][0]["content"]
        return web.json_response(
            {
                "choices": [{"message": {"role": "assistant", "content": prompt.upper()}}],
                "usage": {"completion_tokens": len(prompt)},
            }
        )

    samples = [Sample({"prompt": "ab"}, "ab"), Sample({"prompt": "cde"}, "cde")]

    async def main() -> loadgen.Level:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        target = loadgen.OpenAiChatTarget(
            f"http://127.0.0.1:{port}/v1/chat/completions", samples, 2, max_tokens=7
        )
        try:
            return await loadgen.closed_loop(target, len(samples), 2, 4)
        finally:
            await target.close()
            await runner.cleanup()

    level = asyncio.run(main())
    assert len(bodies) == 4 and len(level.timings) == 4
    assert bodies[0] == {
        "messages": [{"role": "user", "content": "ab"}],
        "max_tokens": 7,
        "temperature": 0.0,
        "stream": False,
    }
    figures = loadgen.token_figures(level)
    assert figures["answers"] == {"0": "AB", "1": "CDE"}
    assert figures["mean_completion_tokens"] == 2.5
    seconds = stats.summarize(level.timings)["seconds"]
    assert figures["tokens_per_s"] == pytest.approx(10 / seconds)


def test_peer_ratios_compare_the_top_and_the_lowest_level() -> None:
    from tools.loadtest import peers

    def level(concurrency: int, throughput: float, tokens: float, ms: float, answers: dict):
        return {
            "concurrency": concurrency,
            "throughput": throughput,
            "tokens_per_s": tokens,
            "p99_ms": 1000.0 / throughput,
            "ms_per_output_token": ms,
            "answers": answers,
        }

    ours = {"levels": [level(1, 0.5, 15, 60, {"0": "a", "1": "b"}), level(16, 3, 90, 160, {})]}
    theirs = {"levels": [level(1, 2, 60, 15, {"0": "a", "1": "c"}), level(16, 4, 120, 90, {})]}
    ratios = peers.ratios(ours, theirs)
    assert ratios["requests/s Triton / llama-server at concurrency 16"] == 0.75
    assert ratios["tokens/s Triton / llama-server at concurrency 16"] == 0.75
    assert ratios["time per output token Triton / llama-server at concurrency 1"] == 4.0
    assert ratios["identical greedy answers at concurrency 1 (share of prompts)"] == 0.5


def test_llama_server_is_started_with_slots_threads_and_the_ggufs_template(
    tmp_path: Path,
) -> None:
    import argparse

    from tools.loadtest import peers

    args = argparse.Namespace(
        llama_server=tmp_path / "llama-server", gguf=tmp_path / "m.gguf",
        slots=16, threads=2, context_per_slot=512,
    )  # fmt: skip
    cmd = " ".join(peers.llama_server_command(args, 9000))
    assert cmd.startswith(f"{tmp_path}/llama-server --model {tmp_path}/m.gguf")
    assert "--parallel 16" in cmd and "--threads 2" in cmd and "--ctx-size 8192" in cmd
    assert "--jinja" in cmd and "--port 9000" in cmd and "--host 127.0.0.1" in cmd


def test_setup_ratios_report_identical_answers_and_word_error_rate() -> None:
    from tools.loadtest import setups

    samples = [
        Sample({"audio": b""}, "2.0 s, en-us at 160 wpm: open the door"),
        Sample({"audio": b""}, "2.0 s, en-gb at 160 wpm: thank you"),
    ]

    def run(throughput: float, answers: dict) -> dict:
        return {"batches": {"8": {"throughput": throughput, "answers": answers}}}

    ratios = setups.setup_ratios(
        {
            "none float32": run(2.0, {"0": "Open the door.", "1": "Thank you."}),
            "nf4 bfloat16": run(3.0, {"0": "Open the door.", "1": "Thank you, too."}),
        },
        samples,
    )
    assert ratios["none float32 batch 8: word error rate"] == 0.0
    assert ratios["nf4 bfloat16 batch 8: throughput vs. none float32"] == 1.5
    assert ratios["nf4 bfloat16 batch 8: answers identical to none float32 (share)"] == 0.5
    assert ratios["nf4 bfloat16 batch 8: word error rate"] == pytest.approx(1 / 5)
    # "Thank you." and "Thank you, too." share "Thank you" (9 of 10 characters); "Open the door." all
    shared = ratios[
        "nf4 bfloat16 batch 8: shared start with none float32 (mean share of its answer)"
    ]
    assert shared == pytest.approx((1.0 + 9 / 10) / 2)


def test_setups_are_quantization_dtype_pairs_with_optional_settings() -> None:
    import argparse

    from tools.loadtest.setups import Setup, parse_setups

    assert parse_setups("none:float32,int4:bfloat16:num_threads=1") == [
        Setup("none", "float32"),
        Setup("int4", "bfloat16", (("num_threads", "1"),)),
    ]
    for bad in ("nf4", "nf4:", "nf4:bfloat16:num_threads", "nf4:bfloat16:=static"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"NAME=VALUE...], got '{bad}'"):
            parse_setups(bad)
    # llm is a front over vlm_stream: its numeric settings are the engine's.
    assert Setup("nf4", "bfloat16").env("llm") == {
        "VLM_STREAM_QUANTIZATION": "nf4",
        "VLM_STREAM_DTYPE": "bfloat16",
    }
    assert Setup("none", "auto").env("stt") == {"STT_QUANTIZATION": "none"}
    static = Setup("int4", "auto", (("num_threads", "1"),))
    assert static.env("vlm_stream") == {
        "VLM_STREAM_QUANTIZATION": "int4",
        "VLM_STREAM_NUM_THREADS": "1",
    }
    assert static.name == "int4 auto num_threads=1"


def test_quantization_series_are_named_by_dtype_only_when_dtypes_are_compared() -> None:
    from tools.loadtest import benchmarks

    assert benchmarks._series_name("nf4", "auto", ["auto"]) == "nf4"
    assert benchmarks._series_name("nf4", "bfloat16", ["float32", "bfloat16"]) == "nf4 bfloat16"


def test_setup_ratios_for_prompts_compare_answers_without_a_word_error_rate() -> None:
    from tools.loadtest import setups

    samples = [Sample({"prompt": "Who wrote Hamlet?"}, "Who wrote Hamlet?")]

    def run(answer: str) -> dict:
        return {
            "batches": {"1": {"throughput": 1.0, "tokens_per_s": 9.0, "answers": {"0": answer}}}
        }

    ratios = setups.setup_ratios(
        {"none float32": run("Shakespeare."), "none bfloat16": run("Shakespeare.")}, samples
    )
    assert ratios["none bfloat16 batch 1: answers identical to none float32 (share)"] == 1.0
    assert ratios["none bfloat16 batch 1: tokens/s"] == 9.0
    assert not any("word error rate" in key for key in ratios)


def test_load_facts_read_every_models_load_line(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "I1123 stt: loaded /store/whisper-tiny.en: whisper (English-only) quantization=none "
        "dtype=float32 device=cpu footprint=144.0 MiB load=0.7 s\n"
        "I1123 tts: loaded piper voice=en_US-joe-medium voices=1 rate=22050 Hz quantization=int8 "
        "dtype=bfloat16 device=cpu footprint=30.8 MiB load=1.7 s\n"
    )
    assert local.load_facts(log, "stt")["footprint_mib"] == 144.0
    tts = local.load_facts(log, "tts")
    assert tts["footprint_mib"] == 30.8 and tts["load_s"] == 1.7
    assert tts["describe"].startswith("piper voice=en_US-joe-medium")
    assert local.load_facts(log, "vlm") == {}


def test_setups_default_to_parsed_setups() -> None:
    """Without --setups, numerics and peers get Setup values like any given list."""
    from tools.loadtest.cli import parse_args
    from tools.loadtest.setups import Setup

    numerics = parse_args(["numerics", "-m", "llm"])
    assert numerics.setups == [
        Setup("none", "float32"),
        Setup("none", "bfloat16"),
        Setup("nf4", "bfloat16"),
    ]
    peers = parse_args(["peers", "-m", "llm", "--llama-server", "x", "--gguf", "y"])
    assert peers.setups == [Setup("none", "auto")]


def package_imports(root: Path, package: str) -> dict[str, set[str]]:
    """Each module of the package under `root` (dotted name) -> the package's modules that
    importing it runs: its imports at the top and inside functions alike, each with the
    packages above it (importing a.b.c runs a/__init__ and a/b/__init__ first)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        targets = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                origin = node.module or ""
                if node.level:
                    base = anchor[: len(anchor) - node.level + 1]
                    origin = ".".join([*base, *([node.module] if node.module else [])])
                targets += [origin, *(f"{origin}.{alias.name}" for alias in node.names)]
        graph[name] = {
            ".".join(target.split(".")[:i])
            for target in targets
            for i in range(1, target.count(".") + 2)
        } & (modules.keys() - {name})
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as the modules along it (the first one again at the end)."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            found = visit(target, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    return next(filter(None, (visit(name, []) for name in sorted(graph))), None)


def test_import_cycles_are_found(tmp_path: Path) -> None:
    """The check below can fail: a lazy import inside a function closes a cycle too, and so
    does a package whose __init__ imports a module that imports the package."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from .sub import b\n")
    (tmp_path / "sub" / "__init__.py").write_text("")
    (tmp_path / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (tmp_path / "c.py").write_text("import pkg.a\n")
    assert import_cycle(package_imports(tmp_path, "pkg")) == [
        "pkg.a", "pkg.sub.b", "pkg.c", "pkg.a",
    ]  # fmt: skip
    (tmp_path / "c.py").write_text("import os\n")
    assert import_cycle(package_imports(tmp_path, "pkg")) is None
    (tmp_path / "__init__.py").write_text("from .a import b\n")
    assert import_cycle(package_imports(tmp_path, "pkg")) == [
        "pkg", "pkg.a", "pkg",
    ]  # fmt: skip


def test_the_suite_has_no_import_cycle() -> None:
    """cli is the top: it imports every command's module, and no module imports it back."""
    graph = package_imports(ROOT / "tools" / "loadtest", "tools.loadtest")
    assert graph["tools.loadtest.cli"] >= {
        "tools.loadtest.run",
        "tools.loadtest.benchmarks",
        "tools.loadtest.peers",
        "tools.loadtest.stt.cli",
    }
    assert import_cycle(graph) is None
    importers = {name for name, targets in graph.items() if "tools.loadtest.cli" in targets}
    assert importers == {"tools.loadtest.__main__"}


@pytest.mark.parametrize("path", ["baseline_server.py", "stt/peer_worker.py", "stt/plot_worker.py"])
def test_files_run_by_other_interpreters_import_nothing_of_the_project(path: str) -> None:
    """Other interpreters run these by path (the peer's throwaway venv, a baseline Python):
    they can import neither the suite nor the project."""
    tree = ast.parse((ROOT / "tools" / "loadtest" / path).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"tools", "tests", "shared", "backends", "serving", "scripts"}


def test_fast_default_verdicts_hold_the_quality_bounds() -> None:
    """fast-default's verdicts: speech keeps quality within 0.01 of the reference's WER with
    most transcripts identical; chat keeps it when every factual prompt is still right."""
    from tools.loadtest.fast_default import compare

    def stt(wer: float, texts: list[str], per_s: float) -> dict:
        return {"batches": {1: {"clips_per_s": per_s, "wer": wer, "texts": texts}}}

    def llm(answer: str) -> dict:
        fact = {"alone": answer, "batched": answer, "right": "Paris" in answer}
        return {"facts": [fact], "batches": {1: {"requests_per_s": 2.0, "texts": [answer]}}}

    results = {
        "models": {
            "stt": {
                "none float32": stt(0.10, ["a b", "c d"], 1.0),
                "none auto": stt(0.105, ["a b", "c e"], 1.5),
                "int4 auto": stt(0.12, ["a b", "c d"], 2.0),
            },
            "llm": {
                "none float32": llm("Paris."),
                "none auto": llm("Paris!"),
                "int4 auto": llm("Rome."),
            },
        }
    }
    verdicts = compare(results, ["none float32", "none auto", "int4 auto"])
    assert verdicts["stt none auto"]["keeps_quality"]
    assert verdicts["stt none auto"]["batch 1: speed"] == 1.5
    assert verdicts["stt none auto"]["batch 1: identical"]["identical"] == 1
    assert not verdicts["stt int4 auto"]["keeps_quality"]  # WER 0.02 above the reference's
    assert verdicts["llm none auto"]["keeps_quality"]
    assert verdicts["llm none auto"]["facts_identical"]["identical"] == 0
    assert not verdicts["llm int4 auto"]["keeps_quality"]


def test_chat_memory_gives_each_front_an_engine_of_its_own(tmp_path: Path) -> None:
    """The baseline of `chat-memory`: what the chat models held when each loaded weights."""
    from tools.container.repository import with_engines
    from tools.loadtest.chat_memory import CHAT, own_engines
    from tools.loadtest.local import repository_copy

    repository = repository_copy(ROOT / "model_repository", ["llm"], tmp_path / "repository")
    assert sorted(p.name for p in repository.iterdir()) == ["llm", "vlm_stream"]
    for model in CHAT:
        if not (repository / model).exists():
            shutil.copytree(ROOT / "model_repository" / model, repository / model)
    env = own_engines(repository)
    assert env == {"VLM_ENGINE_MODEL": "vlm_engine", "LLM_ENGINE_MODEL": "llm_engine"}
    for engine in env.values():
        assert f'name: "{engine}"' in (repository / engine / "config.pbtxt").read_text()
    assert with_engines(CHAT, repository, env) == [
        "vlm_engine",
        "vlm",
        "vlm_stream",
        "llm_engine",
        "llm",
    ]


def test_staggered_clients_start_apart_and_streams_keep_each_responses_time() -> None:
    """Client k's first request leaves k x stagger after the first client's; a streamed
    answer's response times are the request's timing (its first piece is what a streaming
    client waits for)."""

    class Streams:
        def __init__(self) -> None:
            self.first_send: dict[int, float] = {}

        async def send(self, index: int) -> loadgen.Answer:
            self.first_send.setdefault(index, time.monotonic())
            first = time.monotonic_ns()
            await asyncio.sleep(0.5)  # busy until every client has started
            return loadgen.Answer("ab", 2, (first, time.monotonic_ns()))

        async def close(self) -> None:
            pass

    target = Streams()
    level = asyncio.run(loadgen.closed_loop(target, 3, 3, 3, stagger_s=0.1))
    starts = [target.first_send[i] for i in range(3)]
    assert starts[1] - starts[0] >= 0.1 - 0.005 and starts[2] - starts[0] >= 0.2 - 0.005
    assert all(len(t.responses_ns) == 2 for t in level.timings)
    assert all(0 < t.first_response_ms < t.latency_ms for t in level.timings)
