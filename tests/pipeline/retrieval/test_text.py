"""Sentence splitting, snippets and the BM25 tokenizer."""
import time

import pytest

from personalize_t5x.pipeline.retrieval import text as text_lib


def sentences(text, **kwargs):
    return [text[s:e] for s, e in text_lib.split_sentences(text, **kwargs)]


def check_spans(text, spans):
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end <= len(text)
        piece = text[start:end]
        assert piece == piece.strip() and piece
        previous_end = end


def test_english_sentences_and_abbreviations():
    text = 'Mr. Smith went to Washington. He said: "Hi!" Then he left... It cost 3.5 dollars, e.g. a lot. J. R. R. Tolkien wrote (books).'
    assert sentences(text) == [
        "Mr. Smith went to Washington.",
        'He said: "Hi!"',
        "Then he left...",
        "It cost 3.5 dollars, e.g. a lot.",
        "J. R. R. Tolkien wrote (books).",
    ]


def test_line_breaks_are_boundaries():
    text = "Subject line\n\nDear Bob,\r\nthanks for the report.\n  \nBest,\nAlice  "
    assert sentences(text) == ["Subject line", "Dear Bob,", "thanks for the report.", "Best,", "Alice"]


def test_cjk_and_other_scripts_full_stops():
    assert sentences("我今天去了商店。天气很好！你呢？好") == ["我今天去了商店。", "天气很好！", "你呢？", "好"]
    assert sentences("東京は大きい。大阪も大きい。") == ["東京は大きい。", "大阪も大きい。"]
    assert sentences("यह एक वाक्य है। दूसरा वाक्य॥") == ["यह एक वाक्य है।", "दूसरा वाक्य॥"]
    assert sentences("هل أنت بخير؟ نعم") == ["هل أنت بخير؟", "نعم"]
    assert sentences("Это первое. Это второе!") == ["Это первое.", "Это второе!"]


def test_empty_and_whitespace():
    assert text_lib.split_sentences("") == []
    assert text_lib.split_sentences("   \n\t  ") == []
    assert text_lib.make_snippets("d", "") == []
    assert text_lib.make_snippets("d", " \n ") == []


def test_no_punctuation_is_cut_into_bounded_pieces():
    text = " ".join(f"word{i}" for i in range(2000))  # ~15k chars, no punctuation
    spans = text_lib.split_sentences(text, max_chars=300)
    check_spans(text, spans)
    assert all(e - s <= 300 for s, e in spans)
    assert all(text[e - 1] != " " and (e == len(text) or text[e] == " ") for s, e in spans)  # cut at spaces
    assert " ".join(text[s:e] for s, e in spans) == text
    assert text_lib.split_sentences(text, max_chars=None) == [(0, len(text))]


def test_no_whitespace_at_all_is_hard_cut():
    text = "x" * 1234
    assert text_lib.split_sentences(text, max_chars=500) == [(0, 500), (500, 1000), (1000, 1234)]


@pytest.mark.parametrize("text", [
    "This is one sentence of ordinary length. " * 25_000,  # 1 MB of prose
    "word " * 200_000,  # 1 MB without punctuation
    "x" * 1_000_000,  # 1 MB without whitespace
    "中文句子没有空格。" * 110_000,  # ~1 MB of CJK
])
def test_one_megabyte_document(text):
    started = time.perf_counter()
    snippets = text_lib.make_snippets("big", text)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, elapsed
    assert snippets
    for snippet in snippets:
        assert snippet.text == text[snippet.start:snippet.end]
    assert max(len(s.text) for s in snippets) <= 2 * 250 + 250  # bounded, whatever the input


def test_snippet_rule():
    sentence_list = [f"Sentence number {i} says something{'.' * 1} " + "x" * (i % 7) for i in range(40)]
    text = " ".join(s.strip() for s in sentence_list)
    snippets = text_lib.make_snippets("doc-1", text, snippet_chars=250)
    assert snippets and all(s.doc_id == "doc-1" for s in snippets)
    spans = text_lib.split_sentences(text)
    for i, snippet in enumerate(snippets):
        assert snippet.text == text[snippet.start:snippet.end]
        if i < len(snippets) - 1:
            assert len(snippet.text) >= 250
            # Closed as soon as it reached 250: without its last sentence it was shorter.
            inner = [(s, e) for s, e in spans if snippet.start <= s and e <= snippet.end]
            assert inner[-2][1] - snippet.start < 250
    # Snippets tile the sentences in order: every sentence is in exactly one snippet.
    starts = [s for s, _ in spans]
    assert [sn.start for sn in snippets][0] == starts[0]
    assert snippets[-1].end == spans[-1][1]
    for a, b in zip(snippets, snippets[1:]):
        assert a.end < b.start and b.start in starts


def test_short_document_is_one_snippet():
    text = "Short title\nA short body. Two sentences."
    snippets = text_lib.make_snippets("d", text)
    assert [(s.start, s.end, s.text) for s in snippets] == [(0, len(text), text)]


def test_snippet_chars_validated():
    with pytest.raises(ValueError):
        text_lib.make_snippets("d", "text", snippet_chars=0)


def test_tokenizer_default():
    tokenize = text_lib.Tokenizer()
    assert tokenize("Hello, WORLD! It's café_2 naïve.") == ["hello", "world", "it", "s", "café_2", "naïve"]
    assert tokenize("Москва — столица") == ["москва", "столица"]
    assert tokenize("我爱东京タワー and 한국어") == ["我", "爱", "东", "京", "タ", "ワ", "ー", "and", "한국어"]
    assert tokenize("") == []
    assert tokenize("... !!! ???") == []


def test_tokenizer_options():
    assert text_lib.Tokenizer(split_cjk=False)("我爱东京 ok") == ["我爱东京", "ok"]
    assert text_lib.Tokenizer(lowercase=False)("Hello World") == ["Hello", "World"]
    assert text_lib.Tokenizer(min_length=3)("a bb ccc dddd") == ["ccc", "dddd"]
    assert text_lib.Tokenizer(pattern=r"[a-z]+")("abc123def") == ["abc", "def"]
    assert text_lib.Tokenizer(pattern=r"(a)(b)")("xabyab") == ["ab", "ab"]  # groups don't change tokens
    with pytest.raises(ValueError):
        text_lib.Tokenizer(min_length=0)
    with pytest.raises(Exception):
        text_lib.Tokenizer(pattern="(")
