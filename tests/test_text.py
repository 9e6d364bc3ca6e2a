"""Text preparation for TTS: normalisation, dropping characters, and sentence splitting that
never loses text."""

from __future__ import annotations

import random

import pytest

from shared.errors import RequestError
from shared.text import (
    SentenceAssembler,
    check_length,
    drop_characters,
    is_speakable,
    normalize_text,
    require_speakable,
    split_sentences,
    strip_markdown,
)


def letters(text: str) -> str:
    """Every non-space character, in order: what splitting must keep."""
    return "".join(text.split())


def test_normalize_folds_compatibility_forms_and_whitespace() -> None:
    raw = "Ｆｕｌｌ\u00a0width\tand ﬁne\u200b text\x07.\r\n\n  Next\u2028line  "
    assert normalize_text(raw) == "Full width and fine text.\nNext\nline"
    assert normalize_text(" \n\t ") == ""


def test_drop_characters_keeps_spaces_and_tidies_them() -> None:
    keep = set("abc").__contains__
    assert drop_characters("a-b  c!d\ne", keep) == "ab c"
    assert drop_characters("xyz", keep) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ('He said "Go." Then left.', ['He said "Go."', "Then left."]),
        ("Dr. Smith met J. R. Tolkien, e.g. at noon. Bye.", None),
        ("Line one\nLine two", ["Line one", "Line two"]),
        ("你好。再见。ok", ["你好。", "再见。", "ok"]),
        ("Pi is 3.14 today. Yes.", ["Pi is 3.14 today.", "Yes."]),
        ("... Hello. --- World. ???", ["... Hello.", "--- World. ???"]),
    ],
)
def test_sentences_split_where_sentences_end(text: str, expected: list[str] | None) -> None:
    pieces = split_sentences(normalize_text(text), 300)
    if expected is None:  # abbreviations and initials do not end a sentence
        expected = ["Dr. Smith met J. R. Tolkien, e.g. at noon.", "Bye."]
    assert pieces == expected


def test_long_sentences_split_at_clauses_then_spaces_then_anywhere() -> None:
    text = "first part, second part here, third; x" + " and more words" * 4 + " " + "z" * 25
    pieces = split_sentences(text, 20)
    assert all(len(p) <= 20 for p in pieces), pieces
    assert pieces[:2] == ["first part,", "second part here,"]
    assert pieces[-2:] == ["z" * 20, "z" * 5]
    assert letters(" ".join(pieces)) == letters(text)


@pytest.mark.parametrize("seed", range(20))
def test_splitting_keeps_every_character_in_order(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "abc xyz ,.!?;:…\"'()\n-—。！日本 Dr. e.g. 3.5 "
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 600)))
    normalized = normalize_text(text)
    limit = rng.choice([5, 20, 80, 300])
    pieces = split_sentences(normalized, limit)
    assert letters("".join(pieces)) == letters(normalized)
    assert all(p == p.strip() and p for p in pieces)
    # Only an unspeakable piece glued to its neighbour may pass the limit.
    for piece in pieces:
        if len(piece) > limit:
            assert any(not is_speakable(part) for part in piece.split(" ")), piece
    if is_speakable(normalized):
        assert all(is_speakable(p) for p in pieces)


def test_checks_name_the_input_and_the_limit() -> None:
    with pytest.raises(RequestError, match="input 'text' is empty"):
        check_length("  \n ", 10)
    with pytest.raises(
        RequestError, match=r"is 11 characters once normalised \(NFKC\); the limit is 10 \(max"
    ):
        check_length("x" * 11, 10)
    with pytest.raises(RequestError, match="input 'text' has nothing this voice can speak"):
        require_speakable("?!", "?!")
    assert require_speakable("a?", "a?") == "a?"
    assert split_sentences("", 10) == []


STREAMED = (
    "**Paris** is the capital of France. It is known for the Eiffel Tower, and *art*.\n"
    "- Item one\n- Item two. Dr. Smith went home! It cost 3.5 euros... Done"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 40])
def test_sentences_assembled_from_pieces_are_those_of_the_whole_text(size: int) -> None:
    assembler = SentenceAssembler(300)
    got = []
    for start in range(0, len(STREAMED), size):
        got += assembler.add(STREAMED[start : start + size])
    assert got == split_sentences(STREAMED, 300)[:-1]  # the last is only known at the end
    assert got + assembler.flush() == split_sentences(STREAMED, 300)
    assert assembler.flush() == []


def test_a_sentence_is_released_once_the_next_one_starts() -> None:
    assembler = SentenceAssembler(300)
    assert assembler.add("The capital of France is Paris.") == []
    assert assembler.add(" It") == ["The capital of France is Paris."]
    assert assembler.add(" is big") == []
    assert assembler.flush() == ["It is big"]


def test_markdown_symbols_are_not_spoken() -> None:
    assert strip_markdown("## **Paris**, the `capital`") == "Paris, the capital"
    assert strip_markdown("- see [the map](http://x.y/z) __now__") == "see the map now"
    assert strip_markdown("> a quote with ~~no~~ marks") == "a quote with no marks"
    assert strip_markdown("snake_case stays") == "snake_case stays"
