"""Text cleaning shared by the corpus readers: HTML to plain text, whitespace normalization.

All functions are pure and deterministic; the readers call them on every record, so
they are written for speed (a body without markup skips the HTML parser entirely).

`html_to_text` renders HTML the way a reader sees it, as plain text:

- block elements (`p`, `div`, headings, `blockquote`, `ul`/`ol`, `table`, `hr`, ...)
  become paragraphs, separated by one blank line;
- `br`, `li`, `tr` and `dt`/`dd` start a new line inside their paragraph;
- `pre` blocks (code) are kept verbatim as their own paragraph: indentation and line
  breaks survive, only trailing spaces and surrounding blank lines are removed;
- inline markup (`a`, `em`, `code`, `span`, ...) is dropped and its text kept, so a link
  contributes its anchor text and inline code its code;
- `img` (its alt text is mostly "enter image description here"), `script`, `style`
  and `head` contribute nothing (nor `blockquote`, when asked: quoted mail);
- character and entity references are unescaped (`&amp;` -> `&`, `&#39;` -> `'`);
- outside `pre`, runs of whitespace (including non-breaking spaces) become one space.

`normalize_whitespace` applies the same paragraph discipline to plain text.

Speed: sanitized HTML (all of a Stack Exchange dump) is tokenized by one regular
expression into exactly the events `html.parser` would produce, and rendered by the same
state machine; anything unusual (comments, stray "<", script/style) goes through
`html.parser` itself. The tests hold both paths equal on the real dumps.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

__all__ = ["html_to_text", "normalize_whitespace", "normalize_inline", "unescape_and_normalize"]

# Elements whose start or end closes the current paragraph.
_BLOCK_TAGS = frozenset(
    """address article aside blockquote body caption center dd details dialog dir div dl
    dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr html
    legend li main menu nav ol p section summary table tbody td tfoot th thead tr ul""".split()
)
# Of those, the ones that only start a new line (not a new paragraph).
_LINE_TAGS = frozenset(["li", "tr", "dt", "dd", "td", "th"])
_SKIP_TAGS = frozenset(["script", "style", "head", "title", "template", "noscript"])
# Elements the stdlib parser reads as raw text (CDATA_CONTENT_ELEMENTS): the fast path leaves them to it.
_RAW_TEXT_TAGS = frozenset(["script", "style"])
_VOID_BREAK_TAGS = frozenset(["br", "wbr"])
# Every tag the renderer reacts to; any other tag is dropped with no effect.
_STRUCTURAL_TAGS = _BLOCK_TAGS | _SKIP_TAGS | _VOID_BREAK_TAGS | {"pre"}
_SKIP_WITH_BLOCKQUOTES = _SKIP_TAGS | {"blockquote"}
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)

_MARKUP_HINT = re.compile(r"<[A-Za-z/!?]|&(?:#\d+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);?")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_inline(text: str) -> str:
    """Collapses every run of whitespace (newlines included) to one space and strips."""
    return " ".join(text.split())


def normalize_whitespace(text: str) -> str:
    """Normalizes plain text: one space between words, one blank line between paragraphs.

    Line endings become "\\n"; runs of spaces, tabs and other horizontal whitespace
    (non-breaking spaces included) become one space; every line is stripped; runs of
    blank lines become one blank line; leading and trailing blank lines are removed.
    Indentation is not preserved (use `html_to_text` for markup with `pre` blocks).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines).strip("\n")
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text


class _Renderer:
    """The rendering rules as a small state machine fed with tags and text."""

    def __init__(self, skip_tags: frozenset[str] = _SKIP_TAGS) -> None:
        self._skip_tags = skip_tags
        self.paragraphs: list[str] = []
        self._lines: list[str] = []  # finished lines of the current paragraph
        self._pieces: list[str] = []  # text of the current line
        self._pre_depth = 0
        self._pre_pieces: list[str] = []
        self._skip_depth = 0

    def _end_line(self) -> None:
        if self._pieces:
            line = " ".join("".join(self._pieces).split())
            self._pieces = []
            if line:
                self._lines.append(line)

    def _end_paragraph(self) -> None:
        self._end_line()
        if self._lines:
            self.paragraphs.append("\n".join(self._lines))
            self._lines = []

    def _end_pre(self) -> None:
        raw = "".join(self._pre_pieces)
        self._pre_pieces = []
        if "\r" in raw:
            raw = raw.replace("\r\n", "\n").replace("\r", "\n")
        lines = [line.rstrip() for line in raw.split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            self.paragraphs.append("\n".join(lines))

    def start(self, tag: str) -> None:
        if tag in self._skip_tags:
            self._skip_depth += 1
        elif tag == "pre":
            if self._pre_depth == 0:
                self._end_paragraph()
            self._pre_depth += 1
        elif self._pre_depth:
            if tag in _VOID_BREAK_TAGS:
                self._pre_pieces.append("\n")
        elif tag in _VOID_BREAK_TAGS or tag in _LINE_TAGS:
            self._end_line()
        elif tag in _BLOCK_TAGS:
            self._end_paragraph()

    def start_end(self, tag: str) -> None:
        if tag in self._skip_tags or tag == "pre":
            return  # a self-closed <pre/> or <script/> holds nothing
        self.start(tag)

    def end(self, tag: str) -> None:
        if tag in self._skip_tags:
            if self._skip_depth:
                self._skip_depth -= 1
        elif tag == "pre":
            if self._pre_depth:
                self._pre_depth -= 1
                if self._pre_depth == 0:
                    self._end_pre()
        elif self._pre_depth:
            return
        elif tag in _LINE_TAGS:
            self._end_line()
        elif tag in _BLOCK_TAGS:
            self._end_paragraph()

    def data(self, text: str) -> None:
        if self._skip_depth:
            return
        if self._pre_depth:
            self._pre_pieces.append(text)
        else:
            self._pieces.append(text)

    def finish(self) -> str:
        if self._pre_depth:
            self._pre_depth = 0
            self._end_pre()
        self._end_paragraph()
        return "\n\n".join(self.paragraphs)


class _HTMLParserDriver(HTMLParser):
    """Feeds a _Renderer from the stdlib HTML parser (the reference tokenizer)."""

    def __init__(self, renderer: _Renderer) -> None:
        super().__init__(convert_charrefs=True)
        self.renderer = renderer

    def handle_starttag(self, tag, attrs):  # noqa: ANN001 (stdlib signature)
        self.renderer.start(tag)

    def handle_startendtag(self, tag, attrs):  # noqa: ANN001
        self.renderer.start_end(tag)

    def handle_endtag(self, tag):  # noqa: ANN001
        self.renderer.end(tag)

    def handle_data(self, data):  # noqa: ANN001
        self.renderer.data(data)


# A plain start or end tag: "/", name, then attributes whose quoted values hold no surprises.
_SIMPLE_TAG = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9]*)((?:\s(?:[^<>"']|"[^"]*"|'[^']*')*)?/?)>""")


def _render_with_html_parser(markup: str, skip_tags: frozenset[str] = _SKIP_TAGS) -> str:
    renderer = _Renderer(skip_tags)
    parser = _HTMLParserDriver(renderer)
    parser.feed(markup)
    parser.close()
    return renderer.finish()


def _render_fast(markup: str, skip_tags: frozenset[str] = _SKIP_TAGS) -> str | None:
    """The same rendering for the common, well-formed case; None when unsure.

    Sanitized HTML such as Stack Exchange bodies is a sequence of text and plain tags.
    When every "<" opens such a tag (no comments, declarations, stray "<", or raw-text
    elements like <script>), tokenizing with one regular expression gives exactly the
    events the stdlib parser would, several times faster. Anything else returns None and
    goes to the stdlib parser. Tests check both paths agree on real dumps.
    """
    tokens = _SIMPLE_TAG.split(markup)  # text, ("/", name, tail, text)*
    if markup.count("<") != len(tokens) // 4:
        return None  # some "<" does not open a plain tag
    renderer = _Renderer(skip_tags)
    data, start, end, start_end = renderer.data, renderer.start, renderer.end, renderer.start_end
    unescape = html.unescape
    text = tokens[0]
    if text:
        data(unescape(text) if "&" in text else text)
    structural = _STRUCTURAL_TAGS
    for i in range(1, len(tokens), 4):
        tag = tokens[i + 1].lower()
        if tag not in structural:
            pass  # inline markup (a, em, code, img, ...): no event changes the rendering
        elif tag in _RAW_TEXT_TAGS:
            return None
        elif tokens[i]:
            end(tag)
        elif tokens[i + 2].endswith("/"):
            start_end(tag)
        else:
            start(tag)
        text = tokens[i + 3]
        if text:
            data(unescape(text) if "&" in text else text)
    return renderer.finish()


def html_to_text(markup: str, *, drop_blockquotes: bool = False) -> str:
    """Converts an HTML fragment to plain text (see the module docstring for the rules).

    drop_blockquotes: leave out `blockquote` elements entirely (in HTML email they hold
    the quoted message being replied to).
    """
    if not _MARKUP_HINT.search(markup):
        # Plain text that happens to sit in an HTML field: nothing to parse. Newlines are
        # not line breaks in HTML, so the whole thing is one paragraph.
        return normalize_inline(markup)
    skip_tags = _SKIP_WITH_BLOCKQUOTES if drop_blockquotes else _SKIP_TAGS
    fast = _render_fast(markup, skip_tags)
    return fast if fast is not None else _render_with_html_parser(markup, skip_tags)



def unescape_and_normalize(text: str) -> str:
    """Unescapes HTML entities in otherwise plain text, then normalizes whitespace.

    For sources that store plain text with entities (`&amp;`, `&gt;`) and the odd
    `<br />` (Reddit bodies, Amazon reviews): line breaks are kept.
    """
    if "<" in text:
        text = _BR.sub("\n", text)
    if "&" in text:
        text = html.unescape(text)
    return normalize_whitespace(text)

