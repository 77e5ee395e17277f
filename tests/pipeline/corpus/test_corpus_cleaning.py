"""HTML to plain text and whitespace normalization (personalize_t5x/pipeline/corpus/cleaning.py)."""
import html
import re

import pytest

from shared_paths import require_shared
from personalize_t5x.pipeline.corpus import cleaning


@pytest.mark.parametrize(
    "markup, expected",
    [
        # paragraphs become blank-line separated, the source's newlines are not breaks
        ("<p>One\ntwo.</p>\n\n<p>Three.</p>\n", "One two.\n\nThree."),
        # <br> is a line break inside a paragraph, in all its spellings
        ("<p>a<br>b<br/>c<br />d</p>", "a\nb\nc\nd"),
        # inline markup dropped, its text kept; links give their anchor text
        ('<p>I <em>really</em> like <a href="http://x.org/a?b=1&amp;c=2" rel="nofollow">this guide</a>.</p>',
         "I really like this guide."),
        # entities unescaped, including numeric ones and &lt; that is text, not a tag
        ("<p>Tom &amp; Jerry&#39;s &lt;b&gt; &#x263A; &quot;q&quot;</p>", "Tom & Jerry's <b> \u263a \"q\""),
        # list items are lines of one paragraph
        ("<p>Steps:</p>\n<ol>\n<li>Mash</li>\n<li>Boil</li>\n</ol>\n<p>Done.</p>", "Steps:\n\nMash\nBoil\n\nDone."),
        # code blocks keep their indentation and line breaks; inline code is text
        ("<p>Run <code>make</code>:</p>\n<pre><code>def f():\n    return 1  \n\n</code></pre>\n<p>ok</p>",
         "Run make:\n\ndef f():\n    return 1\n\nok"),
        # <br> inside <pre> is a line break, other tags inside are dropped
        ("<pre>a<br>b <b>c</b></pre>", "a\nb c"),
        # images, scripts and styles contribute nothing
        ('<p><img src="x.png" alt="enter image description here"></p><script>var a = "<p>";</script><style>p{}</style><p>text</p>',
         "text"),
        # comments and doctype are dropped
        ("<!DOCTYPE html><!-- note --><p>kept</p>", "kept"),
        # non-breaking spaces and runs of whitespace collapse
        ("<p>a&nbsp;&nbsp;b \t c</p>", "a b c"),
        # headings, blockquotes, hr and divs are paragraphs
        ("<h2>Title</h2><blockquote><p>quoted</p></blockquote><hr><div>after</div>", "Title\n\nquoted\n\nafter"),
        # a stray "<" that opens no tag is text
        ("<p>if a < b and c>d</p>", "if a < b and c>d"),
        # an attribute value holding ">" does not end the tag
        ('<p><a title="x > y" href="#">link</a> end</p>', "link end"),
        # unclosed tags are tolerated
        ("<p>unclosed <b>bold", "unclosed bold"),
        # plain text in an HTML field: one paragraph
        ("no markup at all\nhere", "no markup at all here"),
        ("", ""),
        ("<p> </p><p></p>", ""),
        # tables: rows are lines
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a\nb\nc"),
    ],
)
def test_html_to_text(markup, expected):
    assert cleaning.html_to_text(markup) == expected


@pytest.mark.parametrize(
    "markup",
    [
        "<p>One\ntwo.</p>\n\n<p>Three.</p>\n",
        "<p>a<br>b<br/>c<br />d</p>",
        '<p>I <em>really</em> like <a href="http://x.org/a?b=1&amp;c=2">this</a>.</p>',
        "<pre><code>x = 1\n  y = 2\n</code></pre><p>after &amp; more</p>",
        "<PRE>Upper <BR> case</PRE><P>tags</P>",
        "<pre/>text<pre>in</pre>",
        "<ul><li>a</li><li>b<ul><li>nested</li></ul></li></ul>",
        "<p>unclosed <b>bold",
        "</p>stray end tags</div><p>x</p>",
        "<pre>outer<pre>inner</pre>still outer</pre>after",
        '<div><blockquote class="gmail_quote">quoted</blockquote>kept</div>',
        "<head><title>t</title></head><body><p>b</p></body>",
        "<p>a &amp b &copy c &#0; d</p>",
    ],
)
def test_fast_path_matches_html_parser(markup):
    fast = cleaning._render_fast(markup)
    assert fast is not None, "expected the fast path to handle this markup"
    assert fast == cleaning._render_with_html_parser(markup)
    quoted = cleaning._SKIP_WITH_BLOCKQUOTES
    assert cleaning._render_fast(markup, quoted) == cleaning._render_with_html_parser(markup, quoted)


@pytest.mark.parametrize(
    "markup",
    ["<!-- c --><p>x</p>", "<p>a < b</p>", "<script>x</script>", '<a title="a<b">t</a>', "<p>x</p><!DOCTYPE html>"],
)
def test_fast_path_declines_unusual_markup(markup):
    assert cleaning._render_fast(markup) is None


def test_drop_blockquotes():
    markup = '<div>Thanks!<div class="gmail_quote">On Tue, Bob wrote:<br><blockquote>Can you?</blockquote></div></div>'
    assert cleaning.html_to_text(markup) == "Thanks!\n\nOn Tue, Bob wrote:\n\nCan you?"
    assert cleaning.html_to_text(markup, drop_blockquotes=True) == "Thanks!\n\nOn Tue, Bob wrote:"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  a  b\t c  ", "a b c"),
        ("a\r\nb\rc", "a\nb\nc"),
        ("p1 line1\n  line2  \n\n\n\n p2\n\n", "p1 line1\nline2\n\np2"),
        ("\n\n  \n", ""),
        ("a\u00a0\u00a0b\u2003c", "a b c"),
        ("x\n \t\ny", "x\n\ny"),
    ],
)
def test_normalize_whitespace(text, expected):
    assert cleaning.normalize_whitespace(text) == expected


def test_unescape_and_normalize():
    assert cleaning.unescape_and_normalize("a &amp; b<br />c<BR>d &gt; e") == "a & b\nc\nd > e"
    assert cleaning.unescape_and_normalize("5 < 6 &  7") == "5 < 6 & 7"


def test_normalize_inline():
    assert cleaning.normalize_inline(" a \n b\t") == "a b"


@pytest.mark.integration
@pytest.mark.parametrize("site", ["beer", "coffee"])
def test_fast_path_equals_html_parser_on_real_dump(site):
    """Every body of the real dumps renders identically through both tokenizers."""
    posts = require_shared(f"data/stackexchange/{site}/Posts.xml")
    raw = posts.read_text(encoding="utf-8-sig")
    bodies = [html.unescape(b) for b in re.findall(r'Body="([^"]*)"', raw)]
    assert bodies
    handled = 0
    for body in bodies:
        fast = cleaning._render_fast(body)
        if fast is not None:
            handled += 1
            assert fast == cleaning._render_with_html_parser(body), body[:200]
    assert handled >= 0.95 * len(bodies)
