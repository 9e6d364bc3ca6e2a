"""Vision-language engine: chat messages with images in, text out, every row of a batch at once.

Used by `model_repository/vlm`, `vlm_stream` and `llm` (through `backends.chat.service`), but
plain Python: it never imports Triton, so it runs and is tested in-process.

Any `AutoModelForImageTextToText` checkpoint with an `AutoProcessor` and a chat template
works; two processor families differ in how a batch carries its images, and both are
collated here from rows the processor encoded one at a time (each request's prompt length is
known, and checked, before the batch forms):

* Qwen2-VL / Qwen2.5-VL (and LLaVA): `pixel_values` holds the patches (or pictures) of every
  image of the batch one after the other, with `image_grid_thw` (or `image_sizes`) per image:
  rows' tensors are concatenated in row order;
* Idefics3 / SmolVLM: `pixel_values` is (rows, images, 3, H, W) with a `pixel_attention_mask`;
  rows with fewer or smaller images are zero-padded, which the model recognises as padding.

Token sequences are left-padded, so all rows continue from the same position. Decoding is
transformers' `generate()`, or for Llama text models on a CPU the fused decoder
(`backends.chat.decode`, setting `decoder`): the same prompt pass, then leaner steps.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from backends.chat.decode import DecodeState, FusedDecoder, UnsupportedModel
from backends.chat.sampling import DecodeTotals, RowSampler, RowSink, RowTracker, Sampling
from shared.chat import Completion, Message, template_messages
from shared.errors import ModelLoadError, invalid
from shared.loading import Loaded, LoadPlan, load_pretrained
from shared.logs import quiet_repeated_warnings

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
#: auto: the fused decoder on a CPU where the model supports it, else generate().
DECODERS = ("auto", "fused", "generate")
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
_ROW_MAJOR_MASK = "pixel_attention_mask"


@dataclass(frozen=True)
class Encoded:
    """One row's model inputs (batch dimension 1), as its processor made them."""

    inputs: dict[str, torch.Tensor]

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass(frozen=True)
class EngineRow:
    encoded: Encoded
    sampling: Sampling


class ImageOnlyProcessors:
    """`from_pretrained` for processors, usable where torchvision is missing.

    Qwen-VL-style processors also carry a video processor, and transformers builds video
    processors only with torchvision. Where it is absent (PyPI's torchvision wheels are CUDA
    builds, which do not load next to a CPU-only torch), the checkpoint's own processor class
    is built without its video half: tokenizer, image processor (its Pillow backend) and chat
    template are the checkpoint's, and images are processed exactly as with torchvision.
    Everywhere else this is `AutoProcessor.from_pretrained`.
    """

    @staticmethod
    def from_pretrained(model_dir: Path, **kwargs: Any) -> Any:
        from transformers import AutoProcessor
        from transformers.models.auto.processing_auto import processor_class_from_name
        from transformers.utils import is_torchvision_available

        name = _processor_class_name(Path(model_dir))
        cls = processor_class_from_name(name) if name else None
        if (
            cls is None
            or is_torchvision_available()
            or "video_processor" not in cls.get_attributes()
        ):
            return AutoProcessor.from_pretrained(model_dir, **kwargs)
        attributes = [a for a in cls.get_attributes() if a != "video_processor"]
        image_only: Any = type(
            cls.__name__, (cls,), {"get_attributes": classmethod(lambda _: attributes)}
        )
        return image_only.from_pretrained(model_dir, **kwargs)


def _processor_class_name(model_dir: Path) -> str | None:
    """The processor class a checkpoint names, where AutoProcessor looks for it."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = model_dir / file
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                name = json.load(handle).get("processor_class")
            if name:
                return str(name)
    with open(model_dir / "config.json", encoding="utf-8") as handle:
        model_type = json.load(handle).get("model_type")
    return PROCESSOR_MAPPING_NAMES.get(model_type)


class VlmEngine:
    """A loaded image-text-to-text checkpoint that generates for batches of rows."""

    def __init__(self, loaded: Loaded, max_new_tokens_limit: int, decoder: str = "auto") -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        if getattr(self.processor, "chat_template", None) is None:
            raise ModelLoadError("the checkpoint has no chat template (chat_template.jinja)")
        text_config = self.model.config.get_text_config()
        self.context_length = int(text_config.max_position_embeddings)
        self.max_new_tokens_limit = min(max_new_tokens_limit, self.context_length - 1)
        self.eos_token_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self.float_dtype = getattr(torch, loaded.placement.dtype)
        self.device = torch.device(loaded.placement.device)
        # Text that spells a special token would be read as that token: an `<image>` with no
        # image behind it makes the forward pass fail for the whole batch, a `<|im_start|>`
        # forges a turn. Such text is refused, on the rendered prompt (`_check_special`).
        special = sorted(
            {str(t) for t in self.tokenizer.added_tokens_decoder.values() if t.special},
            key=len,
            reverse=True,
        )
        self._special = re.compile("|".join(map(re.escape, special))) if special else None
        self.fused = self._fused_decoder(decoder)
        self.decode_totals = DecodeTotals()

    def _fused_decoder(self, decoder: str) -> FusedDecoder | None:
        if decoder not in DECODERS:
            raise ModelLoadError(f"setting 'decoder' is {decoder!r}; allowed: {DECODERS}")
        if decoder == "generate" or (decoder == "auto" and self.device.type != "cpu"):
            return None
        try:
            return FusedDecoder(self.model)
        except UnsupportedModel as unsupported:
            if decoder == "fused":
                raise ModelLoadError(
                    f"setting 'decoder' is 'fused', but {unsupported.reason}"
                ) from None
            return None

    @classmethod
    def load(cls, plan: LoadPlan) -> VlmEngine:
        """The checkpoint of `plan` with its settings `attn_implementation`,
        `max_new_tokens_limit` and `decoder` (`backends.chat.settings`)."""
        from transformers import AutoModelForImageTextToText

        settings = plan.settings
        quiet_repeated_warnings()
        loaded = load_pretrained(
            AutoModelForImageTextToText,
            ImageOnlyProcessors,
            plan.model_dir,
            plan.placement,
            model_kwargs={"attn_implementation": settings["attn_implementation"]},
        )
        return cls(loaded, settings["max_new_tokens_limit"], settings["decoder"])

    def describe(self) -> str:
        return (
            f"{type(self.model).__name__} context={self.context_length} "
            f"attention={self.model.config._attn_implementation} "
            f"decoder={'fused' if self.fused else 'generate'} {self._loaded.describe()}"
        )

    @property
    def footprint_bytes(self) -> int:
        return self._loaded.footprint_bytes

    # --- per row: the prompt, as the model will see it ---------------------------------------

    def encode(self, messages: Sequence[Message]) -> Encoded:
        """Apply the chat template and the processor to one conversation."""
        conversation, images = template_messages(messages)
        prompt = self._render(conversation)
        self._check_special(prompt, conversation)
        try:
            inputs = self.processor(
                text=[prompt],
                images=images or None,
                add_special_tokens=False,  # the template wrote them
                return_tensors="pt",
            )
        except ValueError as exc:  # the processor refuses an image (aspect ratio, size)
            raise invalid(f"input 'images': the model's processor refuses them: {exc}") from exc
        return Encoded(inputs=dict(inputs))

    def _render(self, conversation: list[dict[str, Any]]) -> str:
        return str(
            self.processor.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        )

    def _check_special(self, prompt: str, conversation: list[dict[str, Any]]) -> None:
        """Refuse a prompt whose rendering holds a special token the template did not write.

        Checked on the template's output, not per part: two parts (or a part and the
        template's own text) can join into a token neither holds alone, `<|im_` and `start|>`
        into a forged turn, `<ima` and `ge>` into an image with no image behind it. What the
        template writes is known by rendering the same conversation with its text blanked.
        """
        if self._special is None:
            return
        found = Counter(match.group() for match in self._special.finditer(prompt))
        written = self._render(_blank_text(conversation))
        extra = found - Counter(match.group() for match in self._special.finditer(written))
        if extra:
            raise invalid(
                f"input 'prompt' contains {next(iter(extra))!r}, one of the model's special "
                "tokens (alone or joined across parts); send images as images and turns as "
                "messages"
            )

    def check_length(self, encoded: Encoded, max_new_tokens: int) -> None:
        room = self.context_length - max_new_tokens
        if encoded.prompt_tokens > room:
            raise invalid(
                f"input 'prompt' is {encoded.prompt_tokens} tokens (images and history "
                f"included); with max_new_tokens {max_new_tokens} the model's context of "
                f"{self.context_length} tokens leaves room for {room}"
            )

    # --- per batch: one prompt pass, then one decoding step per token for all rows --------

    def generate(
        self, rows: Sequence[EngineRow], sinks: Sequence[RowSink | None] | None = None
    ) -> list[Completion]:
        """Generate for every row at once (per-row options: `backends.chat.sampling`), with
        the fused decoder where it runs (`backends.chat.decode`), else one `generate()` call."""
        sinks = list(sinks) if sinks is not None else [None] * len(rows)
        samplings = [row.sampling for row in rows]
        tracker = RowTracker(self.tokenizer, samplings, sinks, self.eos_token_ids)
        prompt_tokens = [row.encoded.prompt_tokens for row in rows]
        if tracker.all_cancelled():  # nobody is listening: skip the work
            return tracker.completions(prompt_tokens)
        batch, starts = self._collate([row.encoded for row in rows])
        sampler = RowSampler(samplings, starts, self.device)
        max_new_tokens = max(s.max_new_tokens for s in samplings)
        with torch.inference_mode():
            if self.fused is not None:
                self._decode_fused(self.fused, batch, max_new_tokens, sampler, tracker)
            else:
                self._generate(batch, max_new_tokens, sampler, tracker)
        self.decode_totals.add(tracker)
        return tracker.completions(prompt_tokens)

    def _generate(
        self,
        batch: dict[str, torch.Tensor],
        max_new_tokens: int,
        sampler: RowSampler,
        tracker: RowTracker,
    ) -> None:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,  # per row, in RowSampler
            no_repeat_ngram_size=0,
            eos_token_id=list(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
        )
        self.model.generate(
            **batch,
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler] if sampler.needed else []),
            stopping_criteria=StoppingCriteriaList([tracker]),
        )

    def _decode_fused(
        self,
        decoder: FusedDecoder,
        batch: dict[str, torch.Tensor],
        max_new_tokens: int,
        sampler: RowSampler,
        tracker: RowTracker,
    ) -> None:
        """The prompt pass through the model (images included), then fused steps; finished
        rows leave the batch."""
        logits, state = self._prompt_pass(batch, max_new_tokens)
        input_ids = batch["input_ids"]  # what the repetition penalty looks at
        rows = list(range(input_ids.shape[0]))
        for _ in range(max_new_tokens):
            if sampler.needed:
                logits = sampler.apply(input_ids, logits, rows)
            tokens = logits.argmax(dim=-1)
            done = tracker.advance(rows, tokens.tolist())
            if all(done):
                return
            going = [j for j, finished in enumerate(done) if not finished]
            size = decoder.batch_rows(len(going), len(rows))
            if size < len(rows):
                # Finished rows leave; some stay along where a smaller step costs more.
                ended = [j for j, finished in enumerate(done) if finished]
                kept = sorted(going + ended[: size - len(going)])
                keep = torch.tensor(kept, device=tokens.device)
                rows = [rows[j] for j in kept]
                tokens, input_ids = tokens[keep], input_ids[keep]
                state.keep(keep)
            if sampler.needed:
                input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
            logits = decoder.step(tokens, state)

    def prefill(self, rows: Sequence[Encoded], room: int) -> tuple[torch.Tensor, DecodeState]:
        """The prompt pass of `rows` as one left-padded batch (images included): each row's
        first-token logits (rows, vocabulary) in float32, and the keys and values the fused
        decoder continues from, with `room` columns free for the tokens to come."""
        batch, _ = self._collate(rows)
        with torch.inference_mode():
            return self._prompt_pass(batch, room)

    def staged(self, row: Encoded, chunk: int) -> bool:
        """Whether `row`'s prompt passes in stages (`staged_prefill`): its images tile by tile
        where the checkpoint's layout allows it, a text-only prompt longer than `chunk` in
        chunks."""
        if "pixel_values" in row.inputs:
            return _ROW_MAJOR_MASK in row.inputs and hasattr(self.model, "get_image_features")
        return row.prompt_tokens > chunk

    def staged_prefill(self, row: Encoded, room: int, chunk: int) -> PromptStages:
        """The prompt pass of one `staged` row, a stage per `advance()`: `TiledImages` for
        a prompt with images, else `ChunkedPrefill` of `chunk` tokens."""
        batch, _ = self._collate([row])
        if "pixel_values" in batch:
            return TiledImages(self.model, batch, room, chunk)
        return ChunkedPrefill(self.model, batch, room, chunk)

    def _prompt_pass(
        self, batch: dict[str, torch.Tensor], room: int
    ) -> tuple[torch.Tensor, DecodeState]:
        from transformers import DynamicCache

        mask = batch["attention_mask"]
        # Positions count each row's own tokens (left padding is not counted), as generate().
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.model.config.get_text_config())
        output = self.model(
            **batch, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        logits = output.logits[:, -1].float()
        del output
        return logits, DecodeState(cache, mask, positions, room)

    def _collate(self, rows: Sequence[Encoded]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """One left-padded batch from per-row encodings (see the module doc for images)."""
        length = max(row.prompt_tokens for row in rows)
        starts = [length - row.prompt_tokens for row in rows]
        batch: dict[str, torch.Tensor] = {}
        for key in _SEQUENCE_KEYS:
            if key in rows[0].inputs:
                fill = self.pad_token_id if key == "input_ids" else 0
                batch[key] = torch.cat(
                    [
                        torch.nn.functional.pad(r.inputs[key], (start, 0), value=fill)
                        for r, start in zip(rows, starts, strict=True)
                    ]
                )
        with_images = [r.inputs for r in rows if "pixel_values" in r.inputs]
        if with_images:
            if _ROW_MAJOR_MASK in with_images[0]:
                batch.update(_row_major_images([r.inputs for r in rows]))
            else:
                for key in with_images[0]:
                    if key not in batch:
                        batch[key] = torch.cat([inputs[key] for inputs in with_images])
        for key, value in batch.items():
            batch[key] = value.to(
                self.device, dtype=self.float_dtype if value.is_floating_point() else None
            )
        return batch, starts


class PromptStages(Protocol):
    """A prompt pass cut in stages, one per turn of the scheduler's loop."""

    def advance(self) -> tuple[torch.Tensor, DecodeState] | None:
        """One more stage; after the last, the first-token logits and the decoding state."""
        ...


class TiledImages:
    """An image prompt's pass: its images through the vision tower one tile per `advance()`,
    then its text, with the images' features in place of their tokens, in chunks
    (`ChunkedPrefill`).

    Why: the vision tower is most of an image prompt's cost (SmolVLM's, on 2 cores: 1.1 s a
    512-pixel tile in float32, 0.65 s in bfloat16, against about 0.1 s for the text of a
    short prompt), and tiles gain nothing from passing together (measured in float32: 1.10 s
    alone, 1.20 s each in eight). Tile by
    tile, the rows decoding get a step between two tiles, and a request cancelled meanwhile
    costs at most the tile under way. The tower sees each tile on its own in the whole pass
    too, so the features are the same (measured identical to the bit in float32), and they
    take the places of the image tokens as the model's own forward puts them.

    For the row-major layout (Idefics3, SmolVLM: `pixel_attention_mask`); the other layouts
    pass their images whole (`VlmEngine.staged`).
    """

    def __init__(self, model: Any, batch: dict[str, torch.Tensor], room: int, chunk: int) -> None:
        self._model, self._room, self._chunk = model, room, chunk
        self._pixels = batch.pop("pixel_values")
        self._pixel_mask = batch.pop(_ROW_MAJOR_MASK)
        self._text = batch
        self._features: list[torch.Tensor] = []
        self._text_pass: ChunkedPrefill | None = None
        self.done = 0  # tiles through the tower so far

    @property
    def tiles(self) -> int:
        return int(self._pixels.shape[1])

    def advance(self) -> tuple[torch.Tensor, DecodeState] | None:
        if self.done < self.tiles:
            tile = slice(self.done, self.done + 1)
            with torch.inference_mode():
                output = self._model.get_image_features(
                    self._pixels[:, tile], self._pixel_mask[:, tile], return_dict=True
                )
            self._features.extend(output.pooler_output)
            self.done += 1
            return None
        if self._text_pass is None:
            embeds = self._embeddings()
            self._text_pass = ChunkedPrefill(
                self._model, self._text, self._room, self._chunk, embeds=embeds
            )
        return self._text_pass.advance()

    def _embeddings(self) -> torch.Tensor:
        """The prompt's token embeddings with the images' features at their image tokens."""
        ids = self._text["input_ids"]
        with torch.inference_mode():
            embeds = self._model.get_input_embeddings()(ids)
        features = torch.cat(self._features).to(embeds.dtype)
        places = (ids == self._model.config.image_token_id).unsqueeze(-1)
        if int(places.sum()) * embeds.shape[-1] != features.numel():
            raise ValueError(
                f"the images gave {features.shape[0]} feature vectors for "
                f"{int(places.sum())} image tokens"
            )
        return embeds.masked_scatter(places, features)


class ChunkedPrefill:
    """A long prompt's pass, a chunk of tokens per `advance()`, through the model's own forward
    with its cache (as `generate()` continues a prompt); the text of an image prompt passes so
    too, as embeddings (`TiledImages`).

    Why: a prompt pass of thousands of tokens takes seconds on a CPU, and rows that are
    decoding would wait for all of it; in chunks, continuous batching runs a decoding step
    between two chunks, and a request cancelled meanwhile costs at most the chunk under way.
    """

    def __init__(
        self,
        model: Any,
        batch: dict[str, torch.Tensor],
        room: int,
        chunk: int,
        embeds: torch.Tensor | None = None,
    ) -> None:
        """`embeds`: the prompt as embeddings (`TiledImages`), else its `input_ids` pass."""
        from transformers import DynamicCache

        self._model, self._room, self._chunk = model, room, chunk
        self._input = (
            ("input_ids", batch["input_ids"]) if embeds is None else ("inputs_embeds", embeds)
        )
        self._mask = batch["attention_mask"]
        self._positions = (self._mask.long().cumsum(-1) - 1).masked_fill(self._mask == 0, 0)
        self._cache = DynamicCache(config=model.config.get_text_config())
        self.done = 0  # prompt tokens through the model so far

    @property
    def length(self) -> int:
        return int(self._mask.shape[1])

    def advance(self) -> tuple[torch.Tensor, DecodeState] | None:
        """One more chunk; at the last, the first-token logits and the decoding state."""
        start, end = self.done, min(self.done + self._chunk, self.length)
        with torch.inference_mode():
            output = self._model(
                **{self._input[0]: self._input[1][:, start:end]},
                attention_mask=self._mask[:, :end],
                position_ids=self._positions[:, start:end],
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.done = end
        if end < self.length:
            return None
        logits = output.logits[:, -1].float()
        return logits, DecodeState(self._cache, self._mask, self._positions, self._room)


def _blank_text(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with every text part empty: what the template writes by itself."""
    return [
        {
            **message,
            "content": [
                {**part, "text": ""} if part.get("type") == "text" else part
                for part in message["content"]
            ],
        }
        for message in conversation
    ]


def _row_major_images(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Idefics3-style (rows, images, 3, H, W) pixels, zero-padded to the batch's largest."""
    present = [r for r in rows if "pixel_values" in r]
    count = max(r["pixel_values"].shape[1] for r in present)
    channels = present[0]["pixel_values"].shape[2]
    height = max(r["pixel_values"].shape[3] for r in present)
    width = max(r["pixel_values"].shape[4] for r in present)
    pixels, masks = [], []
    for r in rows:
        pixel = torch.zeros(
            (1, count, channels, height, width), dtype=present[0]["pixel_values"].dtype
        )
        mask = torch.zeros((1, count, height, width), dtype=present[0][_ROW_MAJOR_MASK].dtype)
        if "pixel_values" in r:
            n, _, h, w = r["pixel_values"].shape[1:]
            pixel[:, :n, :, :h, :w] = r["pixel_values"]
            mask[:, :n, :h, :w] = r[_ROW_MAJOR_MASK]
        pixels.append(pixel)
        masks.append(mask)
    return {"pixel_values": torch.cat(pixels), _ROW_MAJOR_MASK: torch.cat(masks)}


def _eos_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """End-of-turn tokens: the generation config's (often several), else the tokenizer's."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        raise ModelLoadError("the checkpoint names no end-of-sequence token")
    return [int(i) for i in ids]
