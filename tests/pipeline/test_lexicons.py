"""WordNet and GloVe loading: where they come from, and the errors when they are absent."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from personalize_t5x.errors import InputError
from personalize_t5x.pipeline import lexicons


def test_missing_wordnet_is_a_clear_error_saying_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(lexicons.WORDNET_ENV, raising=False)
    with pytest.raises(InputError) as caught:
        lexicons.resolve_wordnet_dir(tmp_path / "nowhere")
    message = str(caught.value)
    assert "nowhere" in message and "apt-get install wordnet-base" in message
    assert "--wordnet-dir" in message and lexicons.WORDNET_ENV in message
    monkeypatch.setenv(lexicons.WORDNET_ENV, str(tmp_path))
    with pytest.raises(InputError, match=lexicons.WORDNET_ENV):
        lexicons.WordNet()


def test_wordnet_dir_from_the_environment(monkeypatch):
    monkeypatch.setenv(lexicons.WORDNET_ENV, lexicons.DEFAULT_WORDNET_DIR)
    wordnet = lexicons.WordNet()
    assert wordnet.version == "3.0"
    assert {"automobile", "auto", "motorcar"} <= wordnet.synonyms("car")
    assert wordnet.are_synonyms("hops", "hop")  # WordNet's morphy reduces "hops"
    assert not wordnet.are_synonyms("car", "beer")
    assert "cable car" in wordnet.synonyms("car")  # multi-word lemmas never equal a word


def test_glove_text_file_lowercases_and_keeps_the_first_vector(tmp_path):
    path = tmp_path / "vectors.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("The 1 0\nthe 5 5\nAle 0 1\n")
    glove = lexicons.load_glove(path)
    assert glove.dim == 2 and set(glove.row_of) == {"the", "ale"}
    words, vectors = glove.lookup(["ale", "missing", "the"])
    assert words == ["ale", "the"] and np.array_equal(vectors, [[0, 1], [1, 0]])
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2\nb 1 x\n")
    with pytest.raises(InputError, match=r"bad.txt:2: field '<vector>'"):
        lexicons.load_glove(bad)
    with pytest.raises(InputError, match="no such file"):
        lexicons.load_glove(tmp_path / "absent.txt")


def test_packaged_glove_is_the_50d_6b_vocabulary():
    glove = lexicons.load_glove()
    assert glove.dim == 50 and len(glove.row_of) == 400_000
    assert "beer" in glove.row_of and glove.fingerprint == lexicons.GLOVE_PIP


def test_stopwords_are_nltks_english_list():
    assert len(lexicons.ENGLISH_STOPWORDS) == 179
    assert {"the", "and", "don't", "t", "wouldn"} <= lexicons.ENGLISH_STOPWORDS
