"""Text units for retrieval: sentences, snippets, and the BM25 tokenizer.

Sentences
    `split_sentences(text)` returns [start, end) character spans of the sentences of
    `text`, whitespace trimmed, in order. A sentence ends
      * after Latin-style terminal punctuation (`.`, `!`, `?`, `…`, `‽`, optionally followed by
        closing quotes or brackets) when whitespace follows; a `.` after a single letter
        ("J. Smith") or a common abbreviation ("Mr.", "e.g.", "etc.") does not end one;
      * after a full stop of a script that does not put spaces between sentences, whether
        or not whitespace follows: CJK `。！？．｡`, Devanagari `।॥`, Arabic `؟۔`, Ethiopic `።`,
        Armenian `։`, Tibetan `།`, Myanmar `။`, Khmer `។`;
      * at a line break (a title line, a paragraph, a signature line are each their own unit).
    A span longer than `max_chars` (text without punctuation, Thai, a 1 MB run of words) is
    cut at the last whitespace before the limit, or at the limit where there is none, so no
    input makes an unbounded unit. The splitter is one linear regular-expression pass.

Snippets (METHOD.md, stage 1)
    Sentences of one document appended in order until the snippet reaches `snippet_chars`
    (250) characters or the document ends. A snippet's length is measured on the document
    itself (`end - start`, the whitespace between its sentences included); every snippet
    but a document's last is therefore at least `snippet_chars` long. Each `Snippet` keeps
    its document id and [start, end) character offsets into the text it was cut from, so
    `text[start:end] == snippet.text`.

BM25 tokenizer
    `Tokenizer()` lowercases and returns runs of Unicode word characters (`\\w+`: letters,
    digits, underscore, any script). CJK ideographs and kana, written without spaces, are
    one token per character by default (`split_cjk=False` keeps them as runs like any other
    word characters). The pattern is configurable.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator

DEFAULT_SNIPPET_CHARS = 250

# Closing quotes and brackets that may follow a terminator and still belong to the sentence.
_CLOSERS = "\"'”’»)\\]}」』】）〕〉》"
# Terminators that end a sentence only when whitespace follows (scripts written with spaces).
_SPACED_TERMINATORS = ".!?…‽"
# Terminators of scripts written without spaces between sentences: they end one anywhere.
_UNSPACED_TERMINATORS = "。！？．｡।॥؟۔።։།။។"
_LINE_BREAKS = "\r\n\u2028\u2029\x85\x0b\x0c"

_BOUNDARY_RE = re.compile(
    rf"(?P<spaced>[{re.escape(_SPACED_TERMINATORS)}]+[{re.escape(_CLOSERS)}]*)(?=\s)"
    rf"|(?P<unspaced>[{re.escape(_UNSPACED_TERMINATORS)}]+[{re.escape(_CLOSERS)}]*)"
    rf"|(?P<newline>[{re.escape(_LINE_BREAKS)}]+)"
)

# Words after which a single "." is not a sentence end (lowercased, without the dot).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc eg ie e.g i.e cf al approx dept est fig inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec no vol pp ed eds gen col lt sgt mt".split()
)
_WORD_BEFORE_RE = re.compile(r"([\w.]+)$")
_NON_SPACE_RE = re.compile(r"\S")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the single '.' at index `dot` closes an abbreviation or an initial."""
    match = _WORD_BEFORE_RE.search(text, max(0, dot - 12), dot)
    if not match:
        return False
    word = match.group(1).lower().strip(".")
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. Smith", "U.S. Army"
    return word in ABBREVIATIONS


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _cut_long(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """Cuts [start, end) into pieces of at most max_chars, at whitespace where possible."""
    while end - start > max_chars:
        limit = start + max_chars
        # The last space in the second half of the window (so pieces stay reasonably long);
        # line breaks never occur inside a span, they are sentence boundaries.
        lo = start + max_chars // 2
        cut = max(text.rfind(" ", lo, limit + 1), text.rfind("\t", lo, limit + 1), text.rfind("\u3000", lo, limit + 1), text.rfind("\xa0", lo, limit + 1))
        if cut <= start:
            cut = limit
        piece = _trim(text, start, cut)
        if piece[1] > piece[0]:
            yield piece
        start = cut
        m = _NON_SPACE_RE.search(text, start, end)
        if not m:
            return
        start = m.start()
    if end > start:
        yield start, end


def split_sentences(text: str, *, max_chars: int | None = 1000) -> list[tuple[int, int]]:
    """Returns the [start, end) spans of the sentences of `text` (see the module doc).

    Args:
      text: any string; empty or whitespace-only text has no sentences.
      max_chars: spans longer than this are cut (at whitespace where possible); None
        never cuts.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be positive or None, got {max_chars}")
    spans: list[tuple[int, int]] = []

    def add(start: int, end: int) -> None:
        start, end = _trim(text, start, end)
        if end <= start:
            return
        if max_chars is None or end - start <= max_chars:
            spans.append((start, end))
        else:
            spans.extend(_cut_long(text, start, end, max_chars))

    pos = 0
    for match in _BOUNDARY_RE.finditer(text):
        kind = match.lastgroup
        if kind == "newline":
            add(pos, match.start())
            pos = match.end()
        elif kind == "spaced":
            terminator = match.group("spaced")
            if terminator.startswith(".") and terminator.rstrip(_CLOSERS) == "." and _is_abbreviation(text, match.start()):
                continue
            add(pos, match.end())
            pos = match.end()
        else:
            add(pos, match.end())
            pos = match.end()
    add(pos, len(text))
    return spans


@dataclasses.dataclass(frozen=True)
class Snippet:
    """Consecutive sentences of one document; `text == document_text[start:end]`."""

    doc_id: str
    start: int
    end: int
    text: str


def snippet_spans(text: str, *, snippet_chars: int = DEFAULT_SNIPPET_CHARS, max_sentence_chars: int | None = None) -> list[tuple[int, int]]:
    """The [start, end) spans of the snippets of `text` (see `make_snippets`)."""
    if snippet_chars < 1:
        raise ValueError(f"snippet_chars must be positive, got {snippet_chars}")
    if max_sentence_chars is None:
        max_sentence_chars = 2 * snippet_chars
    spans: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for start, end in split_sentences(text, max_chars=max_sentence_chars):
        current = (start, end) if current is None else (current[0], end)
        if current[1] - current[0] >= snippet_chars:
            spans.append(current)
            current = None
    if current is not None:
        spans.append(current)
    return spans


def make_snippets(doc_id: str, text: str, *, snippet_chars: int = DEFAULT_SNIPPET_CHARS, max_sentence_chars: int | None = None) -> list[Snippet]:
    """Snippets of one document: sentences appended until `snippet_chars` or the end.

    Args:
      doc_id: the document's id, kept on every snippet.
      text: the text to cut (the ranking module passes title + "\\n" + body).
      snippet_chars: a snippet is closed once it is at least this long (paper: 250).
      max_sentence_chars: sentences longer than this are cut first (default
        2 * snippet_chars), so text without punctuation still makes ~snippet-sized units.

    Returns:
      The snippets in document order; none for empty or whitespace-only text.
    """
    return [Snippet(doc_id, s, e, text[s:e]) for s, e in snippet_spans(text, snippet_chars=snippet_chars, max_sentence_chars=max_sentence_chars)]


# CJK ideographs (incl. extension A and compatibility), hiragana, katakana, halfwidth katakana.
_CJK_CHARS = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
WORD_PATTERN = r"\w+"
WORD_PATTERN_SPLIT_CJK = rf"[{_CJK_CHARS}]|[^\W{_CJK_CHARS}]+"


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """The BM25 tokenizer: lowercase (optional), then the matches of a regex.

    Attributes:
      lowercase: lowercase the text first (str.lower, Unicode-aware).
      split_cjk: with the default pattern, make each CJK ideograph or kana its own token.
      pattern: a regular expression whose matches are the tokens; None means `\\w+`
        (with `split_cjk`, `\\w+` runs with CJK characters taken one at a time).
      min_length: drop tokens shorter than this many characters.
    """

    lowercase: bool = True
    split_cjk: bool = True
    pattern: str | None = None
    min_length: int = 1

    def __post_init__(self):
        if self.min_length < 1:
            raise ValueError(f"min_length must be >= 1, got {self.min_length}")
        re.compile(self.regex)  # fail early on a bad pattern

    @property
    def regex(self) -> str:
        if self.pattern is not None:
            return self.pattern
        return WORD_PATTERN_SPLIT_CJK if self.split_cjk else WORD_PATTERN

    def __call__(self, text: str) -> list[str]:
        compiled = _compiled(self.regex)
        if self.lowercase:
            text = text.lower()
        tokens = compiled.findall(text) if not compiled.groups else [m.group(0) for m in compiled.finditer(text)]
        if self.min_length > 1:
            tokens = [t for t in tokens if len(t) >= self.min_length]
        return tokens


_COMPILED: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        compiled = _COMPILED[pattern] = re.compile(pattern)
    return compiled


DEFAULT_TOKENIZER = Tokenizer()
