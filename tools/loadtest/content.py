"""Real request content, made locally: spoken sentences, drawn images, prompts, sentences.

A model gets its content from a *generator*: a function of the model's config and the
options that returns samples, each a dict of input name -> value (bytes, str, a list of bytes
for inputs that take several elements, or a number). `inputs` turns them into perf_analyzer's
data file or client tensors by reading the model's config, so a new model needs only a
generator here (registered in GENERATORS, and in MODELS when its name should pick it).
Content for an input the model's config lacks is dropped there; so a generator may offer
optional inputs (max_new_tokens) without knowing which models take them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc.model_config_pb2 import ModelConfig

#: Sentences espeak-ng says clearly enough for whisper-tiny.en; `tests.speech.SENTENCES` first.
#: No numbers: Whisper writes "ten" as "10", which a plain word error rate counts as an error.
EXTRA_SENTENCES = [
    "Please send the report to the office by Friday.",
    "The children played in the garden until it was dark.",
    "We need more water and some bread for the trip.",
    "The meeting starts early in the morning.",
    "I would like a cup of coffee with milk, please.",
    "The train to Paris leaves from the main station.",
    "She bought three red apples at the market.",
]
#: (espeak-ng voice, words per minute), cycled along the sentences (see `make_clips`).
VOICES = [
    ("en-us", 150),
    ("en-gb", 170),
    ("en-us", 185),
    ("en-gb-x-rp", 145),
    ("en-us", 165),
    ("en-gb", 135),
]
#: The rate clients typically send speech at (16 kHz mono WAV): decoding cost is then minimal.
CLIP_RATE = 16_000

#: Text-only prompts: short questions and tasks of the kind chat users send.
TEXT_PROMPTS = [
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give three tips for learning a new language.",
    "What is the capital of France, and what is it famous for?",
    "Summarize the plot of a detective story in one paragraph.",
    "List five fruits that are rich in vitamin C.",
    "How does a bicycle stay upright while moving?",
    "Suggest a name for a small bakery by the river.",
]
#: Questions about an image; the drawn scene answers each of them.
IMAGE_PROMPTS = [
    "Describe this image.",
    "What shapes do you see in the picture?",
    "What color is the largest shape?",
    "How many shapes are there in this image?",
    "What is written in the image?",
]
#: (shape, color name, RGB): what `draw_scene` draws, two or three per image.
SHAPES = ["circle", "square", "triangle"]
COLORS = [
    ("red", (214, 39, 40)),
    ("blue", (31, 119, 180)),
    ("green", (44, 160, 44)),
    ("orange", (255, 127, 14)),
    ("purple", (148, 103, 189)),
]
WORDS = ["HELLO", "STOP", "OPEN", "CAFE", "EXIT"]


@dataclass(frozen=True)
class ContentOptions:
    """What the generators vary: how many distinct samples and how expensive each request is."""

    samples: int = 8
    max_new_tokens: int = 32
    image_size: int = 384
    images_per_prompt: int = 1


@dataclass(frozen=True)
class Sample:
    """One request's content (input name -> value) and a note saying what it is."""

    inputs: dict[str, Any]
    note: str


@dataclass(frozen=True)
class Generator:
    """Makes samples for models whose required inputs are all in `provides`."""

    name: str
    provides: frozenset[str]
    make: Callable[[ModelConfig, ContentOptions], list[Sample]]
    unit: str  # what one request carries, for the reports: "clip", "prompt", "sentence"
    describe: str


# --------------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One spoken sentence, encoded the way a client would send it."""

    text: str
    voice: str
    words_per_minute: int
    seconds: float
    wav: bytes


def make_clips(count: int) -> list[Clip]:
    """`count` clips: every sentence once before any repeats; a repeat gets another voice."""
    from tests.speech import SENTENCES, encode, speak

    sentences = [*SENTENCES, *EXTRA_SENTENCES]
    clips = []
    for i in range(count):
        text = sentences[i % len(sentences)]
        voice, wpm = VOICES[(i + i // len(sentences)) % len(VOICES)]
        samples, rate = speak(text, voice, wpm)
        clips.append(
            Clip(
                text, voice, wpm, len(samples) / rate, encode(samples, rate, target_rate=CLIP_RATE)
            )
        )
    return clips


def speech(config: ModelConfig, options: ContentOptions) -> list[Sample]:
    """espeak-ng sentences in several voices and rates, as 16 kHz mono WAV."""
    from tests.speech import espeak_available

    if not espeak_available():
        raise RuntimeError("speech content needs espeak-ng (apt-get install espeak-ng)")
    return [
        Sample(
            {"audio": clip.wav},
            f"{clip.seconds:.1f} s, {clip.voice} at {clip.words_per_minute} wpm: {clip.text}",
        )
        for clip in make_clips(options.samples)
    ]


# --------------------------------------------------------------------------------------------
# Images and prompts
# --------------------------------------------------------------------------------------------


def draw_scene(index: int, size: int) -> tuple[bytes, str]:
    """A drawn picture (JPEG, as photos are sent) of two or three coloured shapes on a gradient,
    with a word written on it, and a sentence saying what it shows."""
    from PIL import Image, ImageDraw

    top = (235 - 12 * (index % 5), 240, 250 - 9 * (index % 4))
    bottom = (180, 200 - 11 * (index % 3), 215)
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        mix = y / max(1, size - 1)
        draw.line(
            [(0, y), (size, y)],
            fill=tuple(round(a + (b - a) * mix) for a, b in zip(top, bottom, strict=True)),
        )
    count = 2 + index % 2
    described = []
    for k in range(count):
        shape = SHAPES[(index + k) % len(SHAPES)]
        name, rgb = COLORS[(index * 2 + k) % len(COLORS)]
        extent = size * (0.34 - 0.08 * k)
        cx = size * (0.3 + 0.4 * (k % 2))
        cy = size * (0.32 + 0.3 * (k // 2) + 0.05 * (index % 3))
        box = [cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2]
        if shape == "circle":
            draw.ellipse(box, fill=rgb, outline=(20, 20, 20), width=3)
        elif shape == "square":
            draw.rectangle(box, fill=rgb, outline=(20, 20, 20), width=3)
        else:
            draw.polygon(
                [(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=rgb, outline=(20, 20, 20)
            )
        described.append(f"{'an' if name[0] in 'aeiou' else 'a'} {name} {shape}")
    word = WORDS[index % len(WORDS)]
    draw.text((size * 0.08, size * 0.84), word, fill=(10, 10, 10), font_size=max(12, size // 10))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), f"{', '.join(described)} and the word {word}"


def input_names(config: ModelConfig) -> set[str]:
    return {tensor.name for tensor in config.input}


def prompts(config: ModelConfig, options: ContentOptions) -> list[Sample]:
    """Questions about drawn images for models with an `images` input, plain chat prompts for
    text-only ones; `max_new_tokens` bounds every answer so requests cost alike."""
    with_images = "images" in input_names(config) and options.images_per_prompt > 0
    samples = []
    for i in range(options.samples):
        inputs: dict[str, Any] = {"max_new_tokens": options.max_new_tokens}
        if with_images:
            drawn = [
                draw_scene(i * options.images_per_prompt + k, options.image_size)
                for k in range(options.images_per_prompt)
            ]
            inputs["prompt"] = IMAGE_PROMPTS[i % len(IMAGE_PROMPTS)]
            inputs["images"] = [data for data, _ in drawn]
            note = f"{inputs['prompt']} [{'; '.join(d for _, d in drawn)}]"
        else:
            inputs["prompt"] = TEXT_PROMPTS[i % len(TEXT_PROMPTS)]
            note = inputs["prompt"]
        samples.append(Sample(inputs, note))
    return samples


def sentences(config: ModelConfig, options: ContentOptions) -> list[Sample]:
    """Sentences to speak, short to long (the spoken length drives a TTS request's cost)."""
    from tests.speech import SENTENCES

    pool = [*SENTENCES, *EXTRA_SENTENCES]
    return [
        Sample({"text": pool[i % len(pool)]}, pool[i % len(pool)]) for i in range(options.samples)
    ]


GENERATORS = {
    g.name: g
    for g in (
        Generator(
            "speech",
            frozenset({"audio"}),
            speech,
            "clip",
            "espeak-ng speech (16 kHz mono WAV)",
        ),
        Generator(
            "prompts",
            frozenset({"prompt", "images", "max_new_tokens"}),
            prompts,
            "prompt",
            "prompts (with drawn JPEG images where the model takes images)",
        ),
        Generator("sentences", frozenset({"text"}), sentences, "sentence", "English sentences"),
    )
}
#: Models whose name picks their generator; any other model gets the first generator that
#: provides all its required inputs.
MODELS = {
    "stt": "speech",
    "vlm": "prompts",
    "vlm_stream": "prompts",
    "llm": "prompts",
    "tts": "sentences",
    "tts_stream": "sentences",
}


def generator_for(config: ModelConfig) -> Generator:
    """The model's generator: by its name, else by the inputs it requires."""
    if config.name in MODELS:
        return GENERATORS[MODELS[config.name]]
    required = {t.name for t in config.input if not t.optional}
    for generator in GENERATORS.values():
        if required <= generator.provides:
            return generator
    raise LookupError(
        f"no content generator for model {config.name!r} (required inputs: "
        f"{', '.join(sorted(required))}); add one to tools/loadtest/content.py"
    )
