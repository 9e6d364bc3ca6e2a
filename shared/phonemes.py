"""Text to phonemes with espeak-ng, and phonemes to a Piper voice's ids.

Piper voices were trained on espeak-ng's IPA, so the same program must make their input.
espeak-ng is GPL software: it runs as a separate process (`subprocess` with an argument list,
never a shell), so nothing links against it. The text goes to that process on standard input,
never on its command line, so no text (`--help`, `-w /etc/passwd`, `$(reboot)`) can ever be
read as an option; before that, characters outside a small allow-list are dropped: control
characters, and `[`/`]`, with which espeak-ng would read `[[...]]` as raw phoneme codes.

Piper's own front end (piper-phonemize) calls espeak-ng's library clause by clause, learns each
clause's terminator, and writes it back into the phonemes (`.`, `?`, `!`, and `,`/`:`/`;`
followed by a space). The espeak-ng program prints one clause per line but not the
terminators, so `piper_phonemes` recovers them from the text: when the text's clause
punctuation matches espeak-ng's clauses one for one (the usual case for a sentence), each
clause gets its terminator as Piper would; otherwise the clauses are joined by spaces and only
the final terminator is kept. Phonemes are NFD-decomposed code points, as in piper-phonemize,
and become ids as `^ _ (id _)* $`: begin, pad, each phoneme followed by a pad, end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

ESPEAK_PROGRAM = "espeak-ng"
#: Piper's special symbols: beginning and end of utterance, and the pad between phonemes.
BOS, EOS, PAD = "^", "$", "_"
#: Clause punctuation Piper writes into the phonemes; the ones after which it adds a space.
CLAUSE_PUNCTUATION = ".,:;!?"
_PAUSE_PUNCTUATION = frozenset(",:;")
#: Punctuation and symbols passed on to espeak-ng (it reads `$5` as "five dollars", `%` as
#: "percent"); any other non-letter, non-digit character is dropped.
_KEPT_SYMBOLS = frozenset(".,:;!?'\"-()%&$€£@+/")
#: Typographic characters with a plain equivalent espeak-ng reads the same way.
_REPLACEMENTS = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2013": ",",  # an en or em dash between words is a pause, as espeak-ng reads it
        "\u2014": ",",
    }
)
_SPACES = re.compile(r"\s+")
# A run of clause punctuation that ends a clause: followed by whitespace or the end of the text.
_TERMINATOR = re.compile(rf"([{re.escape(CLAUSE_PUNCTUATION)}]+)(?=\s|$)")
# espeak-ng marks words it reads in another language: "(fr)kafe(en)". piper-phonemize drops them.
_LANGUAGE_FLAG = re.compile(r"\([^()]*\)")
# A voice name as espeak-ng's voices directory spells them (`en-us`, `gmw/en-US`, `en+f3`).
_VOICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*)?")
_TIMEOUT_S = 30.0
_MAX_PARALLEL = 4


class PhonemizerError(RuntimeError):
    """espeak-ng is missing or failed: a fault of the server, not of the client's text."""


def clean_text(text: str) -> str:
    """The text espeak-ng is given: compatibility-normalised, allow-listed, spaces collapsed.

    NFKC folds full-width and other compatibility forms to plain ones (`ｈｅｌｌｏ` -> `hello`,
    `…` -> `...`); letters, combining marks and digits of any script are kept, whitespace
    becomes one space, and of everything else only `_KEPT_SYMBOLS` survives.
    """
    text = unicodedata.normalize("NFKC", text).translate(_REPLACEMENTS)
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char.isspace():
            kept.append(" ")
        elif category[0] in "LMN" or char in _KEPT_SYMBOLS:
            kept.append(char)
    return _SPACES.sub(" ", "".join(kept)).strip()


def is_speakable(text: str) -> bool:
    """Whether anything would be said: the cleaned text has at least one letter or digit."""
    return any(unicodedata.category(char)[0] in "LN" for char in clean_text(text))


def check_voice(voice: str) -> str:
    """`voice` if it is a plain espeak-ng voice name; it goes on the command line after `-v`."""
    if not _VOICE.fullmatch(voice):
        raise ValueError(f"espeak-ng voice {voice!r} is not a voice name like 'en-us'")
    return voice


def espeak_program() -> str:
    """The absolute path of espeak-ng, so the process started is the one found on PATH now."""
    path = shutil.which(ESPEAK_PROGRAM)
    if path is None:
        raise PhonemizerError(
            f"{ESPEAK_PROGRAM} is not installed (Debian: apt-get install espeak-ng; "
            f"./scripts/setup and the Triton image install it)"
        )
    return path


def espeak_clauses(text: str, voice: str, *, timeout_s: float = _TIMEOUT_S) -> list[str]:
    """espeak-ng's IPA for `text` (cleaned here), one string per clause, language flags dropped.

    The command line is fixed (`-q --ipa -b 1 -v VOICE --stdin`) and the text travels on
    standard input as UTF-8.
    """
    cleaned = clean_text(text)
    if not cleaned:
        return []
    command = [espeak_program(), "-q", "--ipa", "-b", "1", "-v", check_voice(voice), "--stdin"]
    try:
        result = subprocess.run(
            command, input=cleaned.encode("utf-8"), capture_output=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise PhonemizerError(
            f"{ESPEAK_PROGRAM} did not finish within {timeout_s:.0f} s ({len(cleaned)} characters)"
        ) from exc
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise PhonemizerError(
            f"{ESPEAK_PROGRAM} -v {voice} failed (exit {result.returncode}): {tail}"
        )
    try:
        output = result.stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PhonemizerError(f"{ESPEAK_PROGRAM} wrote output that is not UTF-8: {exc}") from exc
    clauses = (_LANGUAGE_FLAG.sub("", line).strip() for line in output.splitlines())
    return [clause for clause in clauses if clause]


def clause_terminators(text: str) -> list[str]:
    """The clause punctuation of `text`, one character per clause (`?!` -> `?`), in order.

    A text that does not end in clause punctuation still ends a clause: that one gets "".
    """
    cleaned = clean_text(text)
    marks = [run[0] for run in _TERMINATOR.findall(cleaned)]
    if cleaned and cleaned[-1] not in CLAUSE_PUNCTUATION:
        marks.append("")
    return marks


def piper_phonemes(clauses: Sequence[str], text: str) -> str:
    """Join espeak-ng's clauses the way piper-phonemize does, terminators recovered from `text`.

    Matched one for one, each clause is followed by its punctuation, plus a space after `,`,
    `:` and `;` (clauses after `.`, `?`, `!` follow directly, as Piper's training data has
    them). Otherwise the clauses are joined by spaces and only the text's final punctuation is
    kept: espeak-ng broke clauses where the text has no punctuation, or the other way round
    (abbreviations such as "Dr. Smith"), and a wrong guess would put pauses in odd places.
    """
    if not clauses:
        return ""
    terminators = clause_terminators(text)
    if len(terminators) == len(clauses):
        return "".join(
            clause + mark + (" " if mark in _PAUSE_PUNCTUATION else "")
            for clause, mark in zip(clauses, terminators, strict=True)
        )
    return " ".join(clauses) + (terminators[-1] if terminators else "")


def phonemize(text: str, voice: str) -> str:
    """Piper-style IPA phonemes for one text (empty when nothing in it can be said)."""
    return piper_phonemes(espeak_clauses(text, voice), text)


def phonemize_batch(texts: Sequence[str], voice: str) -> list[str]:
    """`phonemize` for many texts, a few espeak-ng processes at a time.

    One process per text keeps each text's clauses apart (espeak-ng prints clauses, not
    inputs, so texts sharing a process could not be told apart again); running a few at once
    hides the process start-up, which is most of each call's time.
    """
    check_voice(voice)
    if len(texts) <= 1:
        return [phonemize(text, voice) for text in texts]
    with ThreadPoolExecutor(max_workers=min(len(texts), _MAX_PARALLEL)) as pool:
        return list(pool.map(lambda text: phonemize(text, voice), texts))


def phoneme_ids(phonemes: str, id_map: Mapping[str, Sequence[int]]) -> list[int]:
    """Piper's ids for a phoneme string: `^ _`, every known phoneme followed by `_`, then `$`.

    Phonemes are the NFD code points (`ç` is `c` and a combining cedilla, both in Piper's
    maps); ones the voice's map lacks are dropped, as Piper drops them. Returns [] when no
    phoneme is known, so the caller can tell unspeakable input from a short word.
    """
    for symbol in (BOS, EOS, PAD):
        if symbol not in id_map:
            raise ValueError(f"the phoneme id map has no {symbol!r} (Piper's BOS, EOS and PAD)")
    ids: list[int] = [*id_map[BOS], *id_map[PAD]]
    for phoneme in unicodedata.normalize("NFD", phonemes):
        if phoneme in (BOS, EOS, PAD):
            continue
        mapped = id_map.get(phoneme)
        if mapped is not None:
            ids += [*mapped, *id_map[PAD]]
    if len(ids) == len(id_map[BOS]) + len(id_map[PAD]):
        return []
    return [*ids, *id_map[EOS]]
