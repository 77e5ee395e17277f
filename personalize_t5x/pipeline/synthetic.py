"""Synthetic corpora written for this project: the bundled demo corpus and benchmark data.

Each synthetic user has a persona: a few favourite topics, habitual openers and closers,
and pet phrases. Their documents mix those with shared filler, so a model that reads a
user's past documents can learn something about how that user writes. It is not real
writing and is labelled as such wherever it is shipped.
"""
from __future__ import annotations

import random
from typing import Iterator

from personalize_t5x.pipeline.corpus.records import Document

TOPICS = {
    "coffee": ["espresso", "grinder", "burr", "crema", "pour-over", "roast", "beans", "kettle", "extraction", "aeropress"],
    "beer": ["stout", "hops", "lager", "yeast", "fermentation", "malt", "IPA", "brewery", "porter", "cask"],
    "hiking": ["trail", "ridge", "boots", "switchbacks", "summit", "map", "water filter", "campsite", "blisters", "fog"],
    "cooking": ["skillet", "garlic", "braise", "stock", "knife", "sourdough", "oven", "seasoning", "butter", "thyme"],
    "cycling": ["chain", "derailleur", "saddle", "cadence", "tyres", "climb", "headwind", "gravel", "brakes", "helmet"],
    "gardening": ["tomatoes", "compost", "seedlings", "mulch", "aphids", "pruning", "soil", "raised bed", "watering", "frost"],
    "photography": ["aperture", "lens", "shutter", "tripod", "exposure", "golden hour", "sensor", "prime", "bokeh", "RAW files"],
    "programming": ["compiler", "unit tests", "refactor", "stack trace", "profiler", "memory leak", "API", "deadline", "linter", "cache"],
}
OPENERS = [
    "Quick question for the experts here.", "Long-time lurker, first real post.", "So here is the thing.",
    "I have been wondering about this for weeks.", "Okay, hear me out.", "A small update on my setup.",
    "This might be a silly question, but", "After a lot of trial and error,", "Honestly,", "Fair warning: this is long.",
]
CLOSERS = [
    "Any advice is welcome.", "Cheers!", "Thanks in advance, folks.", "Let me know what you think.",
    "That's all for now.", "Happy to share more details.", "Would love to hear your take.", "Take care!",
]
PET_PHRASES = [
    "to be fair", "in my humble experience", "no kidding", "as far as I can tell", "believe it or not",
    "for what it's worth", "long story short", "at the end of the day", "if I am honest", "mind you",
]
SENTENCE_TEMPLATES = [
    "My {a} keeps acting up whenever I touch the {b}.",
    "I switched to a different {a} last month and the {b} got noticeably better.",
    "Has anyone tried pairing the {a} with a cheaper {b}?",
    "The {a} was fine, but the {b} needed far more attention than I expected.",
    "I read that the {a} matters more than the {b}, {p}.",
    "Last weekend I spent hours on the {a}, and {p}, it paid off.",
    "What surprised me most was how the {b} changed once the {a} settled.",
    "I keep a notebook about the {a} and the {b} so I can compare week to week.",
    "Most guides skip the {a}, which is a shame because the {b} depends on it.",
    "{P}, the {a} is the part I enjoy the most.",
    "If the {b} goes wrong, I usually blame the {a} first.",
    "A friend suggested changing the {a}, but I am sticking with my {b} for now.",
]


# Python's Mersenne Twister is several times faster than numpy's Generator for the
# scalar draws made here (a benchmark corpus has a million documents); it is seeded, so
# the corpus is still a pure function of the seed.


def _persona(rng: random.Random) -> dict:
    return {
        "topics": rng.sample(sorted(TOPICS), 2),
        "openers": rng.sample(OPENERS, 2),
        "closers": rng.sample(CLOSERS, 2),
        "phrases": rng.sample(PET_PHRASES, 2),
        "length": rng.randrange(4, 11),
    }


def _document_text(rng: random.Random, persona: dict, *, short: bool = False) -> tuple[str, str]:
    words = TOPICS[persona["topics"][rng.random() < 0.3]]
    title_a, title_b = rng.sample(words, 2)
    title = f"{title_a.capitalize()} and {title_b}: {persona['phrases'][0]}?"
    sentences = [rng.choice(persona["openers"])]
    for _ in range(1 if short else persona["length"] + rng.randrange(4)):
        a, b = rng.sample(words, 2)
        phrase = rng.choice(persona["phrases"])
        sentences.append(rng.choice(SENTENCE_TEMPLATES).format(a=a, b=b, p=phrase, P=phrase.capitalize()))
    sentences.append(rng.choice(persona["closers"]))
    return title, " ".join(sentences)


def generate_corpus(
    *, num_users: int, docs_per_user: int, seed: int = 0, start_timestamp: int = 1_420_070_400,
    user_prefix: str = "user", short_fraction: float = 0.0, repost_fraction: float = 0.0,
) -> Iterator[Document]:
    """Yields `num_users * docs_per_user` Documents, user by user, in time order per user.

    `short_fraction` of documents are two-sentence notes (below the paper's 300-character
    target threshold) and `repost_fraction` repeat an earlier document of the same user
    word for word, so the demo exercises the paper's filters.
    """
    rng = random.Random(seed)
    for user_index in range(num_users):
        persona = _persona(rng)
        timestamp = start_timestamp + rng.randrange(86_400 * 30)
        user_id = f"{user_prefix}{user_index:06d}"
        previous: list[tuple[str, str]] = []
        for doc_index in range(docs_per_user):
            timestamp += rng.randrange(3_600, 86_400 * 20)
            if previous and rng.random() < repost_fraction:
                title, text = rng.choice(previous)
            else:
                title, text = _document_text(rng, persona, short=rng.random() < short_fraction)
            previous.append((title, text))
            yield Document(user_id=user_id, doc_id=f"{user_id}-d{doc_index:04d}", timestamp=timestamp,
                           title=title, text=text)


# ------------------------------------------------------------------ the demo's personas
#
# The demo must show what the method is for: past passages carry information about how a
# user writes that the start of the current passage does not. So each demo persona owns
# things no other persona uses together and that appear in every one of its documents,
# but *after* the immediate context (the demo's first 50 characters): a name and a home
# town in its sign-off, and two habit sentences about its own gear (invented brand names
# drawn from a large pool, so that a model cannot memorise them across users). The start
# of a document (a title on the persona's topic and a generic opener) tells only the
# topic. Test users are never seen in training, so only a model that reads
# their past passages can write their habits and sign-off.

DEMO_NAMES = [
    "Ada", "Bram", "Cleo", "Dario", "Edda", "Femi", "Greta", "Hugo", "Ines", "Jonas", "Kiri", "Lars",
    "Mira", "Nico", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tala", "Umar", "Vera", "Wim", "Xena",
    "Yusuf", "Zora", "Anouk", "Boris", "Carla", "Dmitri", "Elif", "Farid", "Gwen", "Hana", "Ivo", "Jade",
]
DEMO_PLACES = [
    "Arden", "Bexley", "Corrin", "Dunmore", "Elsworth", "Fenwick", "Glenhaven", "Harrow", "Islay",
    "Jarrow", "Kestrel Bay", "Lindale", "Marlow", "Northby", "Oakhurst", "Penrith", "Quarry Hill",
    "Redcliff", "Stonebridge", "Thornbury", "Upwell", "Valemont", "Westmere", "Yarrow", "Zennor",
    "Ashcombe", "Birchwood", "Coldharbour", "Dovecote", "Eastleigh",
]
# Two invented syllables make a brand: 24 x 24 = 576 brands, none an English word.
_BRAND_HEADS = ["Var", "Quil", "Zen", "Mor", "Tav", "Brix", "Lum", "Orn", "Pel", "Sko", "Dra", "Fen",
                "Gal", "Hox", "Jun", "Kel", "Nim", "Rud", "Sol", "Tor", "Vex", "Wal", "Yor", "Cad"]
_BRAND_TAILS = ["nok", "low", "dra", "tix", "ban", "per", "ola", "ith", "urn", "esk", "avo", "ime",
                "ock", "ari", "en", "uzz", "ett", "ome", "ax", "ilo", "und", "ova", "eck", "im"]
DEMO_BRANDS = [h + t for h in _BRAND_HEADS for t in _BRAND_TAILS]
DEMO_HABITS = [
    "I always use my {brand} {thing}, nothing else comes close.",
    "These days everything goes through the {brand} {thing} I bought years ago.",
    "My trusty {brand} {thing} is still the heart of the whole routine.",
    "Nothing beats the old {brand} {thing} for this, in my opinion.",
    "I swear by the {brand} {thing} and I will not switch.",
    "The {brand} {thing} has never let me down, not once.",
]
DEMO_SIGN_OFFS = [
    "Greetings from {place}, {name}.", "All the best from {place}, {name}.",
    "Warm regards from {place}, {name}.", "Until next time, {name} in {place}.",
    "Cheers from {place}, {name}.", "Signing off from {place}, {name}.",
]
# Each at least 40 characters: with the shortest title (12 characters with its newline)
# the persona's first brand starts after character 56, outside a 50-character start.
DEMO_OPENERS = [
    "Here is a small update from me this week.", "A quick note for everyone in the group.",
    "So, a little story from the last few days.", "Something I noticed recently, for the record.",
    "Just sharing what happened since last time.", "A short report for the group, as promised.",
]


def _demo_persona(rng: random.Random, index: int) -> dict:
    topic = sorted(TOPICS)[index % len(TOPICS)]
    things = rng.sample(TOPICS[topic], 2)
    brands = rng.sample(DEMO_BRANDS, 2)
    return {
        "topic": topic,
        "name": DEMO_NAMES[index % len(DEMO_NAMES)],
        "place": rng.choice(DEMO_PLACES),
        "habits": [h.format(brand=b, thing=t) for h, b, t in zip(rng.sample(DEMO_HABITS, 2), brands, things)],
        "sign_off": rng.choice(DEMO_SIGN_OFFS),
    }


def _demo_document(rng: random.Random, persona: dict) -> tuple[str, str]:
    """A title on the persona's topic and a generic opener (the immediate context), then
    the persona's own block: its two habits and its sign-off, always in the same order,
    as a person who signs every post the same way."""
    a, b = rng.sample(TOPICS[persona["topic"]], 2)
    sentences = [
        rng.choice(DEMO_OPENERS),
        *persona["habits"],
        persona["sign_off"].format(name=persona["name"], place=persona["place"]),
    ]
    return f"{a.capitalize()} and {b}", " ".join(sentences)


def generate_demo_corpus(*, num_users: int, docs_per_user: int, seed: int = 0,
                         start_timestamp: int = 1_420_070_400, user_prefix: str = "demo_user",
                         short_fraction: float = 0.0, repost_fraction: float = 0.0) -> Iterator[Document]:
    """The bundled demo corpus: personas whose habits and sign-off only past passages show.

    `short_fraction` of documents are one-line notes below the demo's 150-character
    target threshold and `repost_fraction` repeat an earlier document of the same user
    word for word, so the demo also exercises the paper's filters (short notes stay in
    the profiles; reposts are kept once, the earliest).
    """
    rng = random.Random(seed)
    for user_index in range(num_users):
        persona = _demo_persona(rng, user_index)
        timestamp = start_timestamp + rng.randrange(86_400 * 30)
        user_id = f"{user_prefix}{user_index:04d}"
        previous: list[tuple[str, str]] = []
        for doc_index in range(docs_per_user):
            timestamp += rng.randrange(3_600, 86_400 * 20)
            if previous and rng.random() < repost_fraction:
                title, text = rng.choice(previous)
            elif rng.random() < short_fraction:
                a, b = rng.sample(TOPICS[persona["topic"]], 2)
                title, text = f"{a.capitalize()} note", f"Short one today about the {b}. {persona['habits'][0]}"
            else:
                title, text = _demo_document(rng, persona)
            previous.append((title, text))
            yield Document(user_id=user_id, doc_id=f"{user_id}-d{doc_index:03d}", timestamp=timestamp,
                           title=title, text=text)
