"""The demo corpus's personas: what makes past passages worth reading is absent from the
immediate context and present in every earlier document of the same user."""
from __future__ import annotations

import collections

from personalize_t5x.pipeline import synthetic
from personalize_t5x.pipeline.corpus.records import join_title_and_text


def test_persona_block_is_after_the_start_and_in_every_document():
    docs = list(synthetic.generate_demo_corpus(num_users=40, docs_per_user=8, seed=3))
    by_user = collections.defaultdict(list)
    for doc in docs:
        by_user[doc.user_id].append(join_title_and_text(doc.title, doc.text))
    brands = set(synthetic.DEMO_BRANDS)
    for user, texts in by_user.items():
        own = [w.strip(".,") for w in texts[0].split() if w.strip(".,") in brands]
        assert len(own) == 2, user  # two branded habits
        for text in texts:
            start = text[:50]
            assert not any(b in start for b in own), (user, start)
            assert all(b in text[50:] for b in own)
            assert text.rstrip(".").split(", ")[-1] in synthetic.DEMO_NAMES or " in " in text.split(". ")[-1]
    # brands are rarely shared by two users: a model cannot memorise them across users
    owners = collections.Counter(b for texts in by_user.values() for b in
                                 {w.strip(".,") for w in texts[0].split()} & brands)
    assert sum(1 for n in owners.values() if n > 1) <= 4


def test_corpus_is_a_pure_function_of_the_seed():
    a = list(synthetic.generate_demo_corpus(num_users=5, docs_per_user=4, seed=9))
    b = list(synthetic.generate_demo_corpus(num_users=5, docs_per_user=4, seed=9))
    c = list(synthetic.generate_demo_corpus(num_users=5, docs_per_user=4, seed=10))
    assert a == b and a != c
    assert all(x.timestamp < y.timestamp for x, y in zip(a, a[1:]) if x.user_id == y.user_id)


def test_short_notes_fall_below_the_target_threshold():
    docs = list(synthetic.generate_demo_corpus(num_users=20, docs_per_user=10, seed=1, short_fraction=0.2))
    lengths = [len(join_title_and_text(d.title, d.text)) for d in docs]
    assert min(lengths) < 150 < max(lengths)
