"""Text preparation for speech synthesis: normalise, drop what a voice cannot say, split.

A TTS model is trained on a narrow alphabet (MMS-TTS: lower-case letters, space, apostrophe,
hyphen; SpeechT5: a few dozen characters); anything else is at best ignored by its tokenizer
and at worst read as an unknown token that turns into noise. So text goes through, in order:

1. `normalize_text`: Unicode NFKC (full-width letters, ligatures and compatibility forms become
   the plain characters a vocabulary has), control and format characters removed, every run of
   whitespace one space, except that a line break is kept as a sentence boundary;
2. `drop_characters`: characters the voice's front end cannot take are removed (the front end
   decides, `backends.tts.FrontEnd.check`);
3. `require_speakable`: text with no letter or digit left is an error, never silence;
4. `split_sentences`: sentences, each at most `max_chars` long, so a long text is synthesised
   as a batch of short rows instead of one huge one, and never truncated: the pieces hold every
   non-space character of the text, in order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from shared.errors import invalid

#: Where a sentence ends: terminal punctuation, then closing quotes or brackets, then a space.
_SENTENCE_END = re.compile(r"[.!?…;]+[\"'’”»)\]]*(?= )")
#: Full-width sentence ends (Chinese, Japanese) need no space after them.
_WIDE_END = re.compile(r"[。！？；]+[」』”’）]*")
#: Words whose period does not end a sentence ("Dr. Smith", "e.g. this"), compared lower-cased.
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig",
    "approx", "dept", "est", "inc", "ltd", "co", "mt",
})  # fmt: skip
#: Clause boundaries, where a sentence that is too long is split next.
_CLAUSE_END = re.compile(r"[,:，、—–]+(?= )")
#: Unicode categories removed outright: controls, format characters, private use, unassigned.
_DROPPED_CATEGORIES = {"Cc", "Cf", "Co", "Cn", "Cs"}


def normalize_text(text: str) -> str:
    """NFKC, no control or format characters, single spaces; a line break stays a "\\n"."""
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for char in text:
        if char.isspace():
            kept.append("\n" if char in "\n\r\u2028\u2029\x0b\x0c\x85" else " ")
        elif unicodedata.category(char) not in _DROPPED_CATEGORIES:
            kept.append(char)
    lines = (" ".join(line.split()) for line in "".join(kept).split("\n"))
    return "\n".join(line for line in lines if line)


def drop_characters(text: str, keep: Callable[[str], bool]) -> str:
    """`text` without the characters `keep` refuses; whitespace is always kept, then tidied."""
    kept = "".join(char for char in text if char.isspace() or keep(char))
    return normalize_text(kept)


def is_speakable(text: str) -> bool:
    """True when some letter or digit is left: punctuation and spaces alone are not speech."""
    return any(char.isalnum() for char in text)


def require_speakable(text: str, original: str, name: str = "text") -> str:
    """`text`, or an INVALID_ARG error when nothing speakable is left of `original`."""
    if not is_speakable(text):
        shown = original if len(original) <= 40 else original[:37] + "..."
        raise invalid(
            f"input '{name}' has nothing this voice can speak: {shown!r} holds no letter or "
            "digit that the voice's alphabet has"
        )
    return text


def check_length(text: str, max_chars: int, name: str = "text") -> str:
    """Refuse empty text and text over the configured maximum (setting max_text_chars).

    `text` is normalised (`normalize_text`) first: the count is that of what is spoken.
    """
    if not text.strip():
        raise invalid(f"input '{name}' is empty")
    if len(text) > max_chars:
        raise invalid(
            f"input '{name}' is {len(text)} characters once normalised (NFKC); the limit is "
            f"{max_chars} (max_text_chars)"
        )
    return text


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Split normalised text into sentences of at most `max_chars` characters.

    Boundaries, in order of preference: line breaks and sentence ends; for a sentence that is
    still too long, clause punctuation, then the last space that fits, then a hard cut. A piece
    with nothing speakable (a lone "..." or "--") joins its neighbour rather than becoming a
    row of its own. Nothing is lost: the pieces hold every non-space character of `text`, in
    order (joined with single spaces they are `text` itself, unless a hard cut or a full-width
    sentence end split it where it had no space).
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    sentences: list[str] = []
    for line in text.split("\n"):
        for sentence in _sentences(line):
            sentences.extend(_fit(sentence, max_chars))
    return _merge_unspeakable([s for s in sentences if s])


def _cut_after(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Pieces of `text` cut right after every match of `pattern`, spaces at the cut dropped."""
    pieces, start = [], 0
    for match in pattern.finditer(text):
        pieces.append(text[start : match.end()].strip())
        start = match.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def _sentences(line: str) -> list[str]:
    pieces: list[str] = []
    for piece in _cut_after(line, _SENTENCE_END):
        if pieces and _ends_with_abbreviation(pieces[-1]):
            pieces[-1] = f"{pieces[-1]} {piece}"
        else:
            pieces.append(piece)
    return [s for part in pieces for s in _cut_after(part, _WIDE_END)]


def _ends_with_abbreviation(piece: str) -> bool:
    """ "Dr." or "e.g." or an initial ("J. Smith"): a period that does not end the sentence."""
    if not piece.endswith("."):
        return False
    word = piece.rsplit(" ", 1)[-1][:-1].lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _fit(sentence: str, max_chars: int) -> list[str]:
    """`sentence` in pieces of at most `max_chars`: at clauses, then spaces, then anywhere."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    for clause in _cut_after(sentence, _CLAUSE_END):
        if pieces and len(pieces[-1]) + 1 + len(clause) <= max_chars:
            pieces[-1] = f"{pieces[-1]} {clause}"  # short clauses stay together
            continue
        while len(clause) > max_chars:
            cut = clause.rfind(" ", 0, max_chars + 1)
            if cut <= 0:  # one "word" longer than the limit: cut it
                pieces.append(clause[:max_chars])
                clause = clause[max_chars:].lstrip()
            else:
                pieces.append(clause[:cut])
                clause = clause[cut + 1 :]
        if clause:
            pieces.append(clause)
    return pieces


def _merge_unspeakable(pieces: list[str]) -> list[str]:
    merged: list[str] = []
    pending = ""  # unspeakable pieces before the first speakable one
    for piece in pieces:
        if is_speakable(piece):
            merged.append(f"{pending} {piece}" if pending else piece)
            pending = ""
        elif merged:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            pending = f"{pending} {piece}" if pending else piece
    if pending:  # nothing speakable at all: keep the text as one piece; callers refuse it
        merged.append(pending)
    return merged


#: Markdown a chat model writes that a voice must not read out: emphasis and code marks,
#: heading and quote marks and list bullets at a line's start; links keep their text.
_MARKDOWN_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKDOWN_LINE_START = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+]\s+)", re.MULTILINE)
_MARKDOWN_MARKS = re.compile(r"(\*{1,3}|_{2,3}|`{1,3}|~~)")


def strip_markdown(text: str) -> str:
    """`text` as it should be spoken: the words of its markdown, without the symbols."""
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _MARKDOWN_LINE_START.sub("", text)
    return _MARKDOWN_MARKS.sub("", text)


class SentenceAssembler:
    """Sentences out of text that arrives in pieces (a chat model's stream), each as soon as
    it is known to be complete: when `split_sentences` finds a next sentence after it.

    What comes out joined is what `split_sentences` would cut from the whole text, so a
    streamed answer is spoken in the same sentences as the TTS models cut the full text.
    """

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._pending = ""

    def add(self, piece: str) -> list[str]:
        """The sentences `piece` completed (usually none or one)."""
        self._pending += piece
        sentences = split_sentences(self._pending, self._max_chars)
        if len(sentences) < 2:
            return []
        # The last one may still grow: keep it, and the space after it, which the next
        # piece continues.
        *complete, last = sentences
        self._pending = last + self._pending[len(self._pending.rstrip()) :]
        return complete

    def flush(self) -> list[str]:
        """The sentences left once the text is complete."""
        pending, self._pending = self._pending, ""
        return split_sentences(pending, self._max_chars) if pending.strip() else []
