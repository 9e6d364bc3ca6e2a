"""Text to phonemes with espeak-ng, and phonemes to a Piper voice's ids (shared.phonemes).

The hostile-text tests run the real espeak-ng: whatever the text says, it reaches the program
on standard input only, and the command line stays the fixed one. Files the text asks for
(`-w FILE`, `$(touch FILE)`) must not appear.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared import phonemes
from shared.phonemes import (
    PhonemizerError,
    check_voice,
    clause_terminators,
    clean_text,
    is_speakable,
    phoneme_ids,
    phonemize,
    phonemize_batch,
    piper_phonemes,
)
from tests.speech import espeak_available

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (./scripts/setup installs it)"
)

# A Piper-style map: specials, a space, clause punctuation and a few phonemes.
ID_MAP = {
    "_": [0],
    "^": [1],
    "$": [2],
    " ": [3],
    ",": [8],
    ".": [10],
    "?": [13],
    "a": [14],
    "b": [15],
    "c": [16],
    "ç": [40],
    "\u0327": [140],  # combining cedilla
    "ˈ": [120],
}


@pytest.fixture
def espeak_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every subprocess.run that shared.phonemes makes, recorded, then really run."""
    calls: list[dict] = []
    real_run = subprocess.run

    def recording_run(args, **kwargs):
        calls.append({"args": args, **kwargs})
        return real_run(args, **kwargs)

    monkeypatch.setattr(phonemes.subprocess, "run", recording_run)
    return calls


# ------------------------------------------------------------------------------------------
# Cleaning: what reaches espeak-ng
# ------------------------------------------------------------------------------------------


def test_control_characters_brackets_and_odd_symbols_are_dropped() -> None:
    assert clean_text("a\x00b\x1b[31mc\x07\u200bd") == "ab31mcd"
    assert clean_text("[[h@'loU]] {x} <y> |z| `w` ~ ^ _ * = \\") == "h@'loU x y z w"
    assert clean_text("tab\tnew\nline\r\n  spaces") == "tab new line spaces"


def test_compatibility_forms_and_typographic_marks_become_plain() -> None:
    assert clean_text("ｈｅｌｌｏ") == "hello"
    assert clean_text("“quoted” it’s…") == '"quoted" it\'s...'
    assert clean_text("yes — no – maybe") == "yes , no , maybe"


def test_letters_of_any_script_digits_and_spoken_symbols_are_kept() -> None:
    assert clean_text("Zürich café 42 $5 10% A&B señor") == "Zürich café 42 $5 10% A&B señor"


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01\x02", "!!!", "[]{}<>", "...", "\u200b"])
def test_text_without_a_letter_or_digit_is_not_speakable(text: str) -> None:
    assert not is_speakable(text)


@pytest.mark.parametrize("text", ["a", "7", "--help", "Ω", "日本"])
def test_text_with_a_letter_or_digit_is_speakable(text: str) -> None:
    assert is_speakable(text)


@pytest.mark.parametrize("voice", ["-w", "--help", "en us", "en;rm", "", "../en", "en-us\n"])
def test_a_voice_that_is_not_a_plain_name_is_refused(voice: str) -> None:
    with pytest.raises(ValueError, match="not a voice name"):
        check_voice(voice)


@pytest.mark.parametrize("voice", ["en-us", "gmw/en-US", "en+f3", "de"])
def test_plain_voice_names_are_accepted(voice: str) -> None:
    assert check_voice(voice) == voice


# ------------------------------------------------------------------------------------------
# espeak-ng: argument list, text on stdin only, hostile text stays text
# ------------------------------------------------------------------------------------------


@needs_espeak
def test_espeak_runs_from_an_argument_list_with_the_text_on_stdin(espeak_calls: list) -> None:
    text = "--help -v de $(id) ; `ls` | cat"
    assert phonemize(text, "en-us")
    (call,) = espeak_calls
    args = call["args"]
    assert isinstance(args, list) and not call.get("shell", False)
    assert Path(args[0]).name == "espeak-ng" and Path(args[0]).is_absolute()
    assert args[1:] == ["-q", "--ipa", "-b", "1", "-v", "en-us", "--stdin"]
    assert call["input"] == clean_text(text).encode("utf-8")
    assert all(byte >= 0x20 for byte in call["input"])


@needs_espeak
@pytest.mark.parametrize("text", ["--help", "-h", "--version", "--voices"])
def test_option_like_text_is_spoken_not_obeyed(text: str) -> None:
    said = phonemize(text, "en-us")
    # espeak-ng's usage text, version line or voice list would be long and ASCII.
    assert said and len(said) < 40 and "espeak" not in said.lower()
    assert phonemize(text.lstrip("-"), "en-us").strip(".") in said


@needs_espeak
def test_text_asking_for_files_or_commands_creates_nothing(tmp_path: Path) -> None:
    targets = [tmp_path / name for name in ("w.wav", "pho.txt", "touched", "semi")]
    hostile = [
        f"-w {targets[0]} hello",
        f"--phonout={targets[1]} hello",
        f"$(touch {targets[2]})",
        f"hello; touch {targets[3]}",
    ]
    for text in hostile:
        assert phonemize(text, "en-us")
    assert not any(target.exists() for target in targets)
    assert list(tmp_path.iterdir()) == []


@needs_espeak
def test_double_brackets_are_not_read_as_raw_phoneme_codes() -> None:
    # espeak-ng reads [[h@'loU]] as the phonemes of "hello"; dropped brackets make it letters.
    assert phonemize("[[h@'loU]]", "en-us") != phonemize("hello", "en-us")


@needs_espeak
def test_clause_punctuation_is_kept_as_piper_keeps_it() -> None:
    said = phonemize("Hello, world. How are you?", "en-us")
    assert said.count(", ") == 1 and said.endswith("?")
    assert "." in said and " " in said


@needs_espeak
def test_a_batch_gives_what_each_text_gives_alone() -> None:
    texts = ["One, two.", "Is it raining?", "Three", "--help", "Dr. Smith paid $5."]
    assert phonemize_batch(texts, "en-us") == [phonemize(t, "en-us") for t in texts]


def test_text_with_nothing_left_starts_no_process(espeak_calls: list) -> None:
    assert phonemize("\x00[]{}", "en-us") == ""
    assert espeak_calls == []


def test_a_missing_espeak_is_a_server_error_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(phonemes.shutil, "which", lambda name: None)
    with pytest.raises(PhonemizerError, match="espeak-ng is not installed"):
        phonemize("hello", "en-us")


# ------------------------------------------------------------------------------------------
# Clauses and ids, Piper's conventions
# ------------------------------------------------------------------------------------------


def test_terminators_one_per_clause_the_last_may_be_empty() -> None:
    assert clause_terminators("Wait... really?! Yes, fine") == [".", "?", ",", ""]
    assert clause_terminators("a.b c") == [""]  # a dot inside a word ends nothing


def test_matching_clauses_get_their_punctuation_and_pauses_a_space() -> None:
    assert piper_phonemes(["a", "b", "c"], "A, B. C?") == "a, b.c?"
    assert piper_phonemes(["a", "b"], "A; B") == "a; b"


def test_clauses_that_do_not_match_are_joined_keeping_the_final_mark() -> None:
    # espeak-ng broke three clauses where the text has one terminator: no guessing.
    assert piper_phonemes(["a", "b", "c"], "A b c.") == "a b c."
    assert piper_phonemes(["a", "b"], "A b c") == "a b"
    assert piper_phonemes([], "anything") == ""


def test_ids_are_bos_pad_then_each_phoneme_and_a_pad_then_eos() -> None:
    assert phoneme_ids("ab", ID_MAP) == [1, 0, 14, 0, 15, 0, 2]
    assert phoneme_ids("ˈa b.", ID_MAP) == [1, 0, 120, 0, 14, 0, 3, 0, 15, 0, 10, 0, 2]


def test_unknown_phonemes_are_dropped_and_nothing_known_gives_no_ids() -> None:
    assert phoneme_ids("aXb", ID_MAP) == [1, 0, 14, 0, 15, 0, 2]
    assert phoneme_ids("XYZ", ID_MAP) == []
    assert phoneme_ids("", ID_MAP) == []


def test_phonemes_are_nfd_code_points_as_in_piper() -> None:
    # "ç" decomposes to "c" + combining cedilla, both in the map (piper-phonemize does this).
    assert phoneme_ids("ç", ID_MAP) == [1, 0, 16, 0, 140, 0, 2]


def test_special_symbols_inside_phonemes_are_not_doubled() -> None:
    assert phoneme_ids("^a_$", ID_MAP) == [1, 0, 14, 0, 2]


def test_a_map_without_bos_eos_pad_is_refused() -> None:
    with pytest.raises(ValueError, match="BOS, EOS and PAD"):
        phoneme_ids("a", {"a": [1]})
