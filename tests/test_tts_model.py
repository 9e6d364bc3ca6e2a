"""model_repository/tts and tts_stream through the pb_utils harness: outputs a client decodes,
batching, streaming, cancellation and every bad input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.harness.runner import ModelHarness, Result

ROOT = Path(__file__).resolve().parents[1]
TTS = ROOT / "model_repository" / "tts"
TTS_STREAM = ROOT / "model_repository" / "tts_stream"
#: dtype=float32: the batched and alone checks hold float32's exactness, which bfloat16 (what
#: dtype=auto means on a CPU with native bf16) does not keep (a few samples differ by 0.02).
TINY = {"model_path": "vits-tiny-random", "max_text_chars": "300", "dtype": "float32"}
#: Batched and alone run the same arithmetic in other shapes: the same audio to float rounding.
ATOL = 5e-4


@pytest.fixture(scope="module", autouse=True)
def restore_threads() -> Iterator[None]:
    """The models' num_threads setting sets torch's threads for this whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def harness(model_dir: Path, store: Path, **parameters: str) -> Iterator[ModelHarness]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_STORE", str(store))
        loaded = ModelHarness(model_dir, parameters={**TINY, **parameters}).load()
        yield loaded
        loaded.finalize()


@pytest.fixture(scope="module")
def tts(model_store: Path) -> Iterator[ModelHarness]:
    yield from harness(TTS, model_store)


@pytest.fixture(scope="module")
def stream(model_store: Path) -> Iterator[ModelHarness]:
    yield from harness(TTS_STREAM, model_store)


def inputs(*texts: str, **options: Any) -> dict[str, np.ndarray]:
    """One request: `texts` as rows, each option the same for every row."""
    rows = len(texts)
    out = {"text": np.array([[t.encode()] for t in texts], dtype=np.object_)}
    for name, value in options.items():
        if isinstance(value, str | bytes):
            raw = value.encode() if isinstance(value, str) else value
            out[name] = np.array([[raw]] * rows, dtype=np.object_)
        else:
            dtype = {"seed": np.int64, "sample_rate": np.int32, "speaking_rate": np.float32}[name]
            out[name] = np.full((rows, 1), value, dtype=dtype)
    return out


def samples(result: Result, row: int = 0) -> tuple[np.ndarray, int]:
    """The decoded audio of one output row, whatever its format, and its rate."""
    assert result.error is None, result.message
    data = result.outputs["audio"][row, 0]
    rate = int(result.outputs["sample_rate"][row, 0])
    if data[:4] in (b"RIFF", b"fLaC"):
        audio, file_rate = sf.read(io.BytesIO(data), dtype="float32")
        assert file_rate == rate
        return audio, rate
    return np.frombuffer(data, dtype="<f4"), rate


SENTENCES = "Hello there. This is the second sentence, a longer one. Bye!"


@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm_s16", "pcm_f32"])
@pytest.mark.parametrize("rate", [0, 8_000, 44_100])
def test_audio_has_the_asked_format_rate_and_duration(
    tts: ModelHarness, fmt: str, rate: int
) -> None:
    result = tts.infer(inputs(SENTENCES, seed=3, format=fmt, sample_rate=rate))
    assert result.error is None, result.message
    data = result.outputs["audio"][0, 0]
    out_rate = int(result.outputs["sample_rate"][0, 0])
    assert out_rate == (rate or 16_000)
    if fmt == "pcm_s16":
        audio = np.frombuffer(data, dtype="<i2")
    elif fmt == "pcm_f32":
        audio = np.frombuffer(data, dtype="<f4")
    else:
        info = sf.info(io.BytesIO(data))
        assert (info.format, info.samplerate, info.channels) == (fmt.upper(), out_rate, 1)
        audio, _ = sf.read(io.BytesIO(data), dtype="float32")
    seconds = audio.shape[0] / out_rate
    # Three sentences of ~60 letters with two 0.2 s pauses: about 13 letters a second.
    assert 2.5 < seconds < 9.0, seconds
    reference = tts.infer(inputs(SENTENCES, seed=3, format="pcm_f32"))
    assert abs(seconds - samples(reference)[0].shape[0] / 16_000) < 0.002


def test_requests_sound_the_same_batched_and_alone(tts: ModelHarness) -> None:
    requests = [
        inputs(SENTENCES, seed=1, format="pcm_f32"),
        inputs("Short.", seed=2, format="pcm_f32", voice="2"),
        inputs("Another text, at another rate.", seed=3, format="pcm_f32", speaking_rate=1.5),
    ]
    together = tts.execute([tts.request(r) for r in requests], enforce_batcher=False)
    for result, request in zip(together, requests, strict=True):
        alone, _ = samples(tts.infer(request))
        batched, _ = samples(result)
        assert batched.shape == alone.shape
        np.testing.assert_allclose(batched, alone, atol=ATOL, rtol=0)


def test_each_row_of_a_request_gets_its_own_audio(tts: ModelHarness) -> None:
    result = tts.infer(inputs("First row.", "Second row, longer.", seed=4, format="pcm_f32"))
    assert result.outputs["audio"].shape == (2, 1)
    assert result.outputs["sample_rate"].tolist() == [[16_000], [16_000]]
    second, _ = samples(result, 1)
    alone, _ = samples(tts.infer(inputs("Second row, longer.", seed=4, format="pcm_f32")))
    np.testing.assert_allclose(second, alone, atol=ATOL, rtol=0)


def test_without_a_seed_every_request_gets_its_own_noise(tts: ModelHarness) -> None:
    a, b = (samples(tts.infer(inputs("Same words.", format="pcm_f32")))[0] for _ in range(2))
    assert a.shape != b.shape or not np.allclose(a, b, atol=1e-3)


BAD_INPUTS = {
    "empty": ({"text": ""}, "input 'text' is empty"),
    "too long": ({"text": "word " * 61}, "input 'text' is 305 characters; the limit is 300"),
    "unspeakable": ({"text": "?!… 日本語"}, "input 'text' has nothing this voice can speak"),
    "format": ({"format": "mp3"}, "input 'format' is 'mp3'; allowed: wav, flac, pcm_s16, pcm_f32"),
    "voice": ({"voice": "9"}, "input 'voice' is '9', which this model does not have"),
    "slow": ({"speaking_rate": 0.1}, "input 'speaking_rate' is 0.1"),
    "fast": ({"speaking_rate": 9.0}, "allowed: 0.25 to 4.0"),
    "rate": ({"sample_rate": 96_000}, "input 'sample_rate' is 96000; allowed: 8000 to 48000 Hz"),
    "utf-8": ({"text": b"\xff\xfe"}, "input 'text' is not valid UTF-8"),
}


def bad_request(case: str) -> dict[str, np.ndarray]:
    options, _ = BAD_INPUTS[case]
    options = dict(options)
    text = options.pop("text", "A good text.")
    request = inputs("placeholder", seed=1, **options)
    request["text"] = np.array([[text.encode() if isinstance(text, str) else text]], np.object_)
    return request


def test_each_bad_input_fails_only_its_own_request(tts: ModelHarness) -> None:
    good = inputs("A good text.", seed=1, format="pcm_f32")
    missing = {"voice": np.array([[b"1"]], dtype=np.object_)}
    requests = [good] + [bad_request(case) for case in BAD_INPUTS] + [missing] + [good]
    # Triton batches only requests with the same inputs; the harness runs the mix anyway.
    results = tts.execute([tts.request(r) for r in requests], enforce_batcher=False)
    expected = [m for _, m in BAD_INPUTS.values()] + ["input 'text' is required"]
    for result, message in zip(results[1:-1], expected, strict=True):
        assert result.code == "INVALID_ARG", (message, result.message)
        assert message in result.message, result.message
        assert result.http_status == 400
    assert results[0].error is None and results[-1].error is None
    np.testing.assert_array_equal(samples(results[0])[0], samples(results[-1])[0])


def test_errors_are_counted_by_code(tts: ModelHarness) -> None:
    def count() -> float:
        series = tts.metric(
            "multimodal_request_errors_total", {"model": "tts", "code": "INVALID_ARG"}
        )
        return 0.0 if series is None else series.value

    before = count()
    tts.execute([tts.request(bad_request("too long")), tts.request(bad_request("empty"))])
    assert count() == before + 2


# --- tts_stream ---------------------------------------------------------------------------------


def pieces(results: list[Result]) -> list[np.ndarray]:
    return [samples(r)[0] for r in results if "audio" in r.outputs]


def test_stream_sends_each_sentence_in_order_then_the_final_flag(
    stream: ModelHarness, tts: ModelHarness
) -> None:
    request = inputs(SENTENCES, seed=9, format="pcm_f32", sample_rate=22_050)
    results = stream.infer(request)
    assert [r.final for r in results] == [False, False, True]
    assert all(r.error is None for r in results)
    assert [int(r.outputs["sample_rate"][0, 0]) for r in results] == [22_050] * 3
    # The pieces (each but the last ends with the pause) join to the unary response's audio;
    # each piece is resampled on its own, so the joins differ by a few samples' filtering.
    joined = np.concatenate(pieces(results))
    whole, _ = samples(tts.infer(request))
    assert abs(joined.shape[0] - whole.shape[0]) <= 2
    native = np.concatenate(pieces(stream.infer(inputs(SENTENCES, seed=9, format="pcm_f32"))))
    np.testing.assert_allclose(
        native, samples(tts.infer(inputs(SENTENCES, seed=9, format="pcm_f32")))[0], atol=ATOL
    )
    # WAV pieces are complete files.
    for result in stream.infer(inputs(SENTENCES, seed=9, format="wav")):
        assert sf.info(io.BytesIO(result.outputs["audio"][0, 0])).format == "WAV"


def test_stream_batch_runs_sentence_k_of_every_request_together(
    stream: ModelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    engine = stream.model.engine
    forward = engine._forward

    def spy(ids: Any, utterances: Any) -> Any:
        calls.append(len(ids))
        return forward(ids, utterances)

    monkeypatch.setattr(engine, "_forward", spy)
    first, second, bad = stream.execute(
        [
            stream.request(inputs(SENTENCES, seed=1)),
            stream.request(inputs("One sentence only.", seed=2)),
            stream.request(inputs("Fine.", format="ogg")),
        ],
        enforce_batcher=False,
    )
    assert calls == [2, 1, 1]
    assert [r.final for r in first] == [False, False, True]
    assert [r.final for r in second] == [True]
    assert len(bad) == 1 and bad[0].final and bad[0].code == "INVALID_ARG"
    assert "input 'format' is 'ogg'" in bad[0].message


def test_stream_takes_one_text_per_request(stream: ModelHarness) -> None:
    (result,) = stream.infer(inputs("One.", "Two."))
    assert result.code == "INVALID_ARG" and result.final
    assert "input 'text' has 2 rows; this model takes at most 1" in result.message


def test_a_cancelled_stream_gets_no_more_audio(
    stream: ModelHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = stream.request(inputs(SENTENCES, seed=5))
    sender = request.get_response_sender()
    send = type(sender).send

    def cancel_after_first_piece(self: Any, response: Any = None, flags: int = 0) -> None:
        send(self, response, flags)
        if self is sender:
            stream.cancel(request)  # the client hangs up once it has the first sentence

    monkeypatch.setattr(type(sender), "send", cancel_after_first_piece)
    calls: list[int] = []
    forward = stream.model.engine._forward
    monkeypatch.setattr(
        stream.model.engine, "_forward", lambda ids, u: (calls.append(len(ids)), forward(ids, u))[1]
    )
    (results,) = stream.execute([request])
    assert calls == [1], "the second and third sentences are never synthesised"
    assert [r.final for r in results] == [False, True]
    assert "audio" in results[0].outputs and results[1].client_cancelled
    # Cancelled before it ran: answered CANCELLED at once.
    early = stream.request(inputs(SENTENCES))
    stream.cancel(early)
    (results,) = stream.execute([early])
    assert [r.code for r in results] == ["CANCELLED"] and results[0].final


# --- other checkpoints and settings ---------------------------------------------------------------


def test_mms_tts_sized_vits_is_single_speaker(model_store: Path) -> None:
    # The default is the real Piper voice (tests/test_tts_piper.py); the random-weight
    # MMS-TTS-sized VITS stays servable, as the proof that any VITS checkpoint is.
    for loaded in harness(TTS, model_store, model_path="mms-tts-eng-random"):
        assert any("loaded vits voices=1 rate=16000 Hz" in m for _, m in loaded.logs)
        audio, rate = samples(loaded.infer(inputs("Hi.", seed=1, format="pcm_f32", voice="0")))
        assert rate == 16_000 and 0.05 < audio.shape[0] / rate < 2.0
        refused = loaded.infer(inputs("Hi.", voice="1"))
        assert refused.code == "INVALID_ARG" and "its 1 voice(s): '0'" in refused.message


def test_speecht5_serves_with_named_voices(model_store: Path) -> None:
    for loaded in harness(TTS, model_store, model_path="speecht5-tiny-random"):
        assert any("loaded speecht5 voices=3" in m for _, m in loaded.logs)
        audio, rate = samples(
            loaded.infer(inputs("Hi. Bye.", seed=1, format="pcm_f32", voice="speaker-b"))
        )
        # The tiny checkpoint speaks every sentence to its length limit, 20 frames of 256
        # samples per token ("▁Hi.</s>": 5 tokens), and a 0.2 s pause joins the two.
        tokens = [len(ids) for ids in loaded.model.engine.front_end.encode(["Hi.", "Bye."])]
        assert tokens == [5, 6]
        assert rate == 16_000 and audio.shape[0] == sum(tokens) * 20 * 256 + int(0.2 * 16_000)
        refused = loaded.infer(inputs("Hi.", voice="speaker-z"))
        assert refused.code == "INVALID_ARG" and "'speaker-a', 'speaker-b'" in refused.message


def test_quantized_int8_serves(model_store: Path) -> None:
    for loaded in harness(TTS, model_store, quantization="int8"):
        assert any("quantization=int8" in m for _, m in loaded.logs)
        assert samples(loaded.infer(inputs("Quantized.", seed=1)))[0].shape[0] > 0
