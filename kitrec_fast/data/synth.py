"""Synthetic KitREC rows: same schema, prompt layout and output layout as the Hub datasets.

Used by tests and demos that must run without the real data. Everything is deterministic: each
row draws from ``random.Random`` instances seeded with strings (hashed with SHA-512 by the
``random`` module, so independent of ``PYTHONHASHSEED`` and the machine), and the item catalogs
come from fixed seeds. Row ``i`` depends only on ``(seed, domain, kind, split, i)`` and the
candidate set, so ``generate_rows(10)`` is a prefix of ``generate_rows(100)``.

Design notes (what the real data does not document, decided here):

* Items come from per-domain catalogs (Books ~6k, Music ~6k, Movies ~7k), so candidate lines
  repeat across users as in the real data, and a row costs little more than a few joins.
* History lines are ordered oldest first (the most recent interaction is the last line).
* The ground truth always has metadata (it needs a ``gt_title``); metadata-less items appear
  among negatives and in histories at the domain's share (Movies ~43%, Music ~10%).
* Set A = 20-35 hard negatives from the ground truth's leaf category + random; Set B = random.
  The user (history, ground truth, rating) is drawn independently of the set, so both sets of
  one row share the ground truth; candidates, their order and the reasoning text differ.
* Val rows use the training user types of ``kind``; test rows cycle the domain's 5 types
  whatever ``kind`` is. Val rows keep a training-style ``output`` (one JSON object) even though
  their prompt asks for a top-10 array, as the evaluator accepts a single object as a list of one.
* ``thinking_length`` is the character count of the reasoning between ``<think>`` and ``</think>``.

Layouts of val/test rows (``layout``): ``plain`` writes them in the training prompt's layout with
flat fields. ``template`` writes the documented evaluation forms: the evaluation template's
prompt layout (history headers without the ``(Source Domain)`` suffix, a ``(Format: ...)`` line
after each history list, the ``(Total 100):`` candidate header and a note line, candidates as
indented ``(ID: X)`` lines between lone ``[`` / ``]`` lines; ``Movies & TV`` as the target domain
name) in a row ``{instruction, input, output: "", ground_truth: JSON string of a one-element list,
metadata}``. ``mixed`` draws, per row, the prompt layout (plain or template), the row form (flat
fields or nested ``metadata``) and the ground-truth form (dict, JSON string, list of one, JSON
string of a list, or only the ``gt_*`` fields), from a stream of its own: the user, candidates
and target of a row are the same in every layout.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

GENERATOR_VERSION = "kitrec_fast.synth/v1"

DOMAINS = ("music", "movies")
KINDS = ("dualft", "singleft")
SPLITS = ("train", "val", "test")
LAYOUTS = ("plain", "template", "mixed")
CANDIDATE_SETS = ("A", "B")
N_CANDIDATES = 100
SOURCE_DOMAIN = "Books"
TARGET_DOMAIN = {"music": "Music", "movies": "Movies"}
TEMPLATE_TARGET_DOMAIN = {"music": "Music", "movies": "Movies & TV"}  # the evaluation template's names
NO_HISTORY_LINE = "(No interactions in this domain yet)"

USER_TYPES: dict[tuple[str, str], list[str]] = {
    ("dualft", "music"): ["overlapping_books_music", "cold_start_2core_music",
                          "cold_start_3core_music", "cold_start_4core_music"],
    ("dualft", "movies"): ["overlapping_books_movies", "cold_start_2core_movies",
                           "cold_start_3core_movies", "cold_start_4core_movies"],
    ("singleft", "music"): ["source_only_music"],
    ("singleft", "movies"): ["source_only_movies"],
}
TEST_USER_TYPES: dict[str, list[str]] = {
    d: USER_TYPES[("dualft", d)] + USER_TYPES[("singleft", d)] for d in DOMAINS
}

# Share of catalog items without metadata; Movies' 43% is the figure the real data shows.
UNKNOWN_SHARE = {"books": 0.03, "music": 0.10, "movies": 0.43}
CATALOG_SIZE = {"books": 6000, "music": 6000, "movies": 7000}

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_SEED = 42
# (file name, generate_rows keyword arguments); the order is the regeneration order.
SAMPLE_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("dualft_music.jsonl.gz", dict(n=200, domain="music", kind="dualft", split="train")),
    ("dualft_movies.jsonl.gz", dict(n=120, domain="movies", kind="dualft", split="train")),
    ("singleft_music.jsonl.gz", dict(n=120, domain="music", kind="singleft", split="train")),
    ("singleft_movies.jsonl.gz", dict(n=120, domain="movies", kind="singleft", split="train")),
    ("test_music.jsonl.gz", dict(n=50, domain="music", kind="dualft", split="test", layout="mixed")),
    ("test_movies.jsonl.gz", dict(n=50, domain="movies", kind="dualft", split="test", layout="mixed")),
]

# ----------------------------------------------------------------------------------------------
# Word pools. Accents, curly quotes, em dashes and CJK are deliberate: the tokenizer and every
# text path downstream must survive them.

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

_FIRST = ["Anna", "James", "Zoë", "Renée", "José", "Ólafur", "Anaïs", "Søren", "Chloé", "Jürgen",
          "François", "Åsa", "Maya", "Daniel", "Grace", "Lucas", "Nora", "Tomás", "Elena", "Marcus",
          "Ingrid", "Kofi", "Priya", "Hiro", "Amélie", "Mateo", "Leila", "Oskar", "Clara", "Rafael",
          "Bettina", "Desmond", "Yara", "Felix", "Imogen", "Noé", "Saoirse", "Emeka", "Linnéa", "Ruth"]
_LAST = ["Marchetti", "Núñez", "Müller", "Lefèvre", "Østergaard", "Çelik", "Kowalczyk", "Brontë",
         "Hale", "Whitaker", "Okafor", "Lindqvist", "Moreau", "Castillo", "Fairbanks", "O’Connell",
         "Vasquez", "Hartmann", "Sørensen", "Delacroix", "Ashworth", "Nakamura", "Ferreira", "Quinn",
         "Abernathy", "Iglesias", "Petrović", "Rhodes", "Valdés", "Kingsley", "Duarte", "Mbeki"]
_CJK_NAMES = ["山田 花子", "李 明", "김 지수", "佐藤 健", "王 芳", "박 서준"]
_ADJ = ["Electric", "Silent", "Golden", "Broken", "Midnight", "Hollow", "Crimson", "Wild", "Quiet",
        "Northern", "Burning", "Velvet", "Distant", "Lonely", "Bright", "Restless", "Paper", "Secret",
        "Endless", "Fading", "Sacred", "Wandering", "Frozen", "Hidden", "Last", "Little", "Lost",
        "Neon", "Open", "Starlit", "Bittersweet", "Ashen", "Tender", "Savage", "Gentle", "Iron",
        "Scarlet", "Weightless", "Borrowed", "Painted"]
_NOUN = ["Horizon", "River", "Garden", "Heart", "Road", "City", "Summer", "Night", "Fire", "Ocean",
         "Mirror", "Winter", "Shadow", "Kingdom", "Light", "Harbor", "Machine", "Letters", "Hours",
         "Echoes", "Stars", "Season", "Bridge", "Island", "Storm", "Crown", "Orchard", "Signal",
         "Tide", "Ghosts", "Wolves", "Lanterns", "Atlas", "Cathedral", "Frontier", "Daughters",
         "Compass", "Meadow", "Archive", "Lullaby", "Engine", "Thunder", "Sparrow", "Covenant"]
_PLACE = ["Avalon", "Montréal", "Kyoto", "São Paulo", "Reykjavík", "Marrakesh", "the North",
          "Blue Hill", "Brooklyn", "Córdoba", "Zürich", "Galway", "Nashville", "Lagos", "Kraków",
          "the Lowlands", "Valparaíso", "Tromsø", "New Orleans", "Lisbon"]
_CJK_TITLES = {
    "music": ["夜に駆ける", "月光の詩", "春の雨", "東京の夜", "사랑의 노래", "花様年華", "青い鳥", "星空のメロディ"],
    "movies": ["千年の森", "花様年華", "風の谷の物語", "東京物語 (リマスター版)", "밤의 여행자", "月下の約束", "夏の終わり"],
    "books": ["ノルウェイの夜", "雪国の手紙", "三体の記憶", "82년생의 일기", "紅楼の夢"],
}

# (top category, leaf); leaves double as genre labels in the reasoning text.
_GENRES: dict[str, list[tuple[str, str]]] = {
    "books": [
        ("Literature & Fiction", "Historical Fiction"), ("Literature & Fiction", "Literary Fiction"),
        ("Mystery, Thriller & Suspense", "Thrillers & Suspense"), ("Mystery, Thriller & Suspense", "Cozy Mystery"),
        ("Science Fiction & Fantasy", "Science Fiction"), ("Science Fiction & Fantasy", "Epic Fantasy"),
        ("Romance", "Contemporary Romance"), ("Biographies & Memoirs", "Arts & Literature"),
        ("History", "World History"), ("Self-Help", "Personal Transformation"),
        ("Teen & Young Adult", "Coming of Age"), ("Arts & Photography", "Music History"),
        ("Religion & Spirituality", "Spirituality"), ("Humor & Entertainment", "Humor"),
        ("Children’s Books", "Classics"),
    ],
    "music": [
        ("Rock", "Classic Rock"), ("Rock", "Indie & Lo-Fi"), ("Alternative Rock", "Indie Rock"),
        ("Pop", "Adult Contemporary"), ("Jazz", "Cool Jazz"), ("Classical", "Symphonies"),
        ("Country", "Americana"), ("Folk", "Contemporary Folk"), ("R&B", "Neo-Soul"),
        ("Dance & Electronic", "Ambient"), ("Soundtracks", "Film Scores"), ("Metal", "Progressive Metal"),
        ("Blues", "Delta Blues"), ("Christian", "Gospel"), ("International Music", "J-Pop"),
        ("Rap & Hip-Hop", "East Coast"),
    ],
    "movies": [
        ("Genre for Featured Categories", "Drama"), ("Genre for Featured Categories", "Science Fiction"),
        ("Genre for Featured Categories", "Fantasy"), ("Genre for Featured Categories", "Mystery & Suspense"),
        ("Genre for Featured Categories", "Romance"), ("Genre for Featured Categories", "Comedy"),
        ("Genre for Featured Categories", "Documentary"), ("Genre for Featured Categories", "Action & Adventure"),
        ("Genre for Featured Categories", "Kids & Family"), ("Genre for Featured Categories", "Horror"),
        ("Genre for Featured Categories", "Anime"), ("TV", "Drama Series"), ("TV", "British Television"),
        ("Music Videos & Concerts", "Concerts"), ("Genre for Featured Categories", "Faith & Spirituality"),
        ("Genre for Featured Categories", "Westerns"),
    ],
}
_ROOT = {"books": "Books", "music": "CDs & Vinyl", "movies": "Movies & TV"}

# Book leaf -> target leaves it plausibly transfers to; drives both user profiles and reasoning.
_AFFINITY: dict[str, dict[str, list[str]]] = {
    "music": {
        "Historical Fiction": ["Symphonies", "Contemporary Folk", "Film Scores"],
        "Literary Fiction": ["Indie Rock", "Contemporary Folk", "Cool Jazz"],
        "Thrillers & Suspense": ["Film Scores", "Progressive Metal", "East Coast"],
        "Cozy Mystery": ["Adult Contemporary", "Cool Jazz", "Americana"],
        "Science Fiction": ["Ambient", "Film Scores", "Progressive Metal"],
        "Epic Fantasy": ["Film Scores", "Symphonies", "Progressive Metal"],
        "Contemporary Romance": ["Adult Contemporary", "Neo-Soul", "J-Pop"],
        "Arts & Literature": ["Classic Rock", "Cool Jazz", "Delta Blues"],
        "World History": ["Symphonies", "Delta Blues", "Classic Rock"],
        "Personal Transformation": ["Ambient", "Gospel", "Adult Contemporary"],
        "Coming of Age": ["Indie & Lo-Fi", "Indie Rock", "J-Pop"],
        "Music History": ["Classic Rock", "Delta Blues", "Cool Jazz"],
        "Spirituality": ["Gospel", "Ambient", "Contemporary Folk"],
        "Humor": ["Indie & Lo-Fi", "Americana", "East Coast"],
        "Classics": ["Symphonies", "Adult Contemporary", "Contemporary Folk"],
    },
    "movies": {
        "Historical Fiction": ["Drama", "Westerns", "British Television"],
        "Literary Fiction": ["Drama", "Romance", "British Television"],
        "Thrillers & Suspense": ["Mystery & Suspense", "Action & Adventure", "Horror"],
        "Cozy Mystery": ["Mystery & Suspense", "British Television", "Comedy"],
        "Science Fiction": ["Science Fiction", "Anime", "Action & Adventure"],
        "Epic Fantasy": ["Fantasy", "Anime", "Action & Adventure"],
        "Contemporary Romance": ["Romance", "Comedy", "Drama Series"],
        "Arts & Literature": ["Documentary", "Drama", "Concerts"],
        "World History": ["Documentary", "Westerns", "Drama"],
        "Personal Transformation": ["Documentary", "Faith & Spirituality", "Drama"],
        "Coming of Age": ["Drama Series", "Comedy", "Anime"],
        "Music History": ["Concerts", "Documentary", "Drama"],
        "Spirituality": ["Faith & Spirituality", "Documentary", "Kids & Family"],
        "Humor": ["Comedy", "Kids & Family", "Drama Series"],
        "Classics": ["Kids & Family", "Fantasy", "Drama"],
    },
}

_TITLE_PATTERNS = {
    "music": ["{A} {N}", "The {N} Sessions", "{N} & {N2}", "Songs from the {A} {N}", "{A} {N} (Remastered)",
              "{N} — Live at {P}", "{A} {N} [Deluxe Edition]", "{N}, Vol. {k}", "Greatest Hits: {A} {N}",
              "{A} {NS}", "Letters to {P}", "{A} & {A2}"],
    "movies": ["The {A} {N}", "{N} of the {A} {N2}", "{A} {N} [Blu-ray]", "{N}: Season {k}",
               "{A} {N} (Director’s Cut)", "Return to {P}", "The {N} of {P} [DVD]", "{A} {N}",
               "{N} — The Complete Series", "Murder in {P}", "The {A} {NS}: Collector’s Edition"],
    "books": ["The {N} of {P}: A Novel", "{A} {N}", "The {A} {N} ({N2} Trilogy Book {k})",
              "{N} & {N2}: A Memoir", "The {N}keeper’s Daughter", "A {A} {N} in {P}",
              "{A} {N}: Stories", "The Last {N} of {P}", "After the {N}", "{N}: A History of {P}"],
}
_MUSIC_FORMS = ["ballad", "anthem", "lullaby", "instrumental", "suite", "duet", "hymn", "jam", "waltz", "sketch"]
_PLURAL = {"lullaby": "lullabies", "waltz": "waltzes", "sketch": "sketches"}
_TEXTURES = ["warm analog synths", "fingerpicked guitar", "brushed drums", "lush string arrangements",
             "gritty slide guitar", "close vocal harmonies", "muted trumpet", "layered field recordings",
             "a walking upright bass", "tape-saturated piano", "choral swells", "fuzzed-out riffs",
             "sparse electric piano", "booming 808s", "pedal steel", "a horn section"]
_MOODS = ["brooding", "joyful", "melancholy", "restless", "intimate", "cinematic", "playful", "defiant",
          "hushed", "euphoric", "wistful", "hypnotic", "tender", "raw", "luminous"]
_QUALITY = ["crisp", "meticulous", "lo-fi", "expansive", "understated", "lavish", "unpolished", "pristine"]
_THEMES = ["grief and second chances", "a family secret", "small-town ambition", "a disputed inheritance",
           "first love", "an unlikely friendship", "survival at the edge of the map", "a cold case",
           "faith under pressure", "the cost of fame", "exile and return", "a heist gone wrong",
           "a lighthouse keeper’s last winter", "two rival chefs", "a city on the brink of revolution"]
_PRAISE = ["“a triumph”", "“quietly devastating”", "“impossible to put down”", "“the year’s best surprise”",
           "“funny, sharp and humane”", "“a masterclass in atmosphere”", "“gorgeous — and unsettling”"]

_SUMMARY = {
    "music": [
        "{W}’s {ord} studio album pairs {T} with {T2}.",
        "Recorded in {P} over {k} weeks, it moves from {M} {FS} to {M2} {FS2}.",
        "Critics praised the {Q} production and the single “{A} {N}”.",
        "Includes {k} bonus tracks, liner notes and a newly remastered mix.",
        "{AM} collection of {FS} — equal parts {T} and {T2}.",
        "Fans of {G} will recognise the {Q} songwriting, but the second half turns {M}.",
        "The reissue restores the original running order and adds {am} {F} recorded live in {P}.",
        "Produced by {W2}, the record leans on {T} and a {Q} low end.",
        "{W} wrote most of these songs after a year of touring; the result is {M} and direct.",
        "Its closing track, “{N} in {P}”, became a cult favourite on late-night radio.",
    ],
    "movies": [
        "{AM} story about {TH}, set in {P}.",
        "{W} stars as a {role} drawn into {TH} — {praise} according to critics.",
        "Directed by {W2}, the film balances {M} set pieces with {M2} character moments.",
        "Special features include a commentary track, {k} deleted scenes and a making-of featurette.",
        "This {Q} restoration presents the film in its original aspect ratio with a new 5.1 mix.",
        "Over {k} episodes the series follows {TH}, shifting from {M} comedy to {M2} drama.",
        "When a {role} returns to {P}, old loyalties are tested and {TH} comes to light.",
        "Winner of {k} festival awards; {praise}.",
        "Shot on location in {P}, it remains {am} favourite of {G} fans.",
        "Languages: English, Français, Español; subtitles included. Runtime approx. {mins} minutes.",
    ],
    "books": [
        "{W} returns with {am} novel about {TH}.",
        "Set in {P}, this {G} tale follows a {role} who must confront {TH}.",
        "{praise} — The New York Times Book Review.",
        "{AQ}, {M} exploration of {TH}, told across {k} decades.",
        "From the bestselling author of “{A} {N}”, a story of {TH} and the people it changes.",
        "Book {k} of the acclaimed series; readers call it {praise}.",
        "Part memoir, part field guide, it is {M} and {M2} by turns.",
        "Includes a reading group guide and an interview with {W}.",
    ],
}
# Sentences per summary (1-4); tuned so full prompts land at ~5-8k Qwen3 tokens. Movies lines are
# longer because 43% of Movies candidates are short metadata-less lines.
_SUMMARY_WEIGHTS = {"books": (7, 3, 0, 0), "music": (9, 1, 0, 0), "movies": (3, 4, 2, 1)}
_ROLES = ["retired detective", "young cellist", "disgraced journalist", "widowed farmer", "ship’s doctor",
          "reluctant heir", "night-shift nurse", "street magician", "marine biologist", "school teacher"]
_ORD = ["debut", "second", "third", "fourth", "fifth", "long-awaited sixth"]

# ----------------------------------------------------------------------------------------------
# Catalogs


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str          # "" when the item has no metadata
    genre: str          # leaf category, or "Unknown"
    categories: str     # "Root > Top > Leaf", or "Unknown"
    avg_rating: float
    summary: str
    line: str           # the candidate line

    @property
    def known(self) -> bool:
        return bool(self.title)

    def history_line(self, rating: float, list_form: bool) -> str:
        if not self.title:
            prefix = "- " if list_form else ""
            return f"{prefix}[Item: {self.item_id}] | Unknown | Rating: {rating:.1f}"
        head = f"- {self.title}" if list_form else f"(ID: {self.item_id}) {self.title}"
        return f"{head} | {self.categories} | Rating: {rating:.1f} | {self.summary}"


@dataclass
class Catalog:
    domain: str
    items: list[Item]
    known: list[Item]
    unknown: list[Item]
    by_genre: dict[str, list[Item]]


def _isbn10(rng: random.Random) -> str:
    digits = [rng.randrange(10) for _ in range(9)]
    check = (11 - sum((10 - k) * d for k, d in enumerate(digits)) % 11) % 11
    return "".join(map(str, digits)) + ("X" if check == 10 else str(check))


def _asin(rng: random.Random) -> str:
    return "B0" + "".join(rng.choice(_ALNUM) for _ in range(8))


def _person(rng: random.Random) -> str:
    if rng.random() < 0.04:
        return rng.choice(_CJK_NAMES)
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _artist(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)}s"
    if r < 0.45:
        return f"{rng.choice(_NOUN)} & the {rng.choice(_ADJ)} {rng.choice(_NOUN)}s"
    return _person(rng)


def _slots(rng: random.Random, domain: str, genre: str) -> dict[str, Any]:
    a, a2 = rng.sample(_ADJ, 2)
    n, n2 = rng.sample(_NOUN, 2)
    t, t2 = rng.sample(_TEXTURES, 2)
    m, m2 = rng.sample(_MOODS, 2)
    f, f2 = rng.sample(_MUSIC_FORMS, 2)
    q = rng.choice(_QUALITY)
    return dict(A=a, A2=a2, N=n, N2=n2, NS=n if n.endswith("s") else n + "s", T=t, T2=t2, M=m, M2=m2,
                F=f, F2=f2, FS=_PLURAL.get(f, f + "s"), FS2=_PLURAL.get(f2, f2 + "s"), P=rng.choice(_PLACE),
                k=rng.randint(2, 12), Q=q, AQ=("An " if q[0] in "aeiou" else "A ") + q, G=genre,
                AM=("An " if m[0] in "aeiou" else "A ") + m, am=("an " if m[0] in "aeiou" else "a ") + m,
                W=_artist(rng) if domain == "music" else _person(rng), W2=_person(rng),
                TH=rng.choice(_THEMES), role=rng.choice(_ROLES), praise=rng.choice(_PRAISE),
                ord=rng.choice(_ORD), mins=rng.randint(84, 178))


def _make_item(rng: random.Random, domain: str, item_id: str, known: bool) -> Item:
    avg = round(min(5.0, max(1.0, rng.gauss(4.2, 0.55))), 1)
    if not known:
        return Item(item_id, "", "Unknown", "Unknown", avg, "",
                    f"[Item: {item_id}] | Unknown | Rating: {avg:.1f}")
    top, leaf = rng.choice(_GENRES[domain])
    s = _slots(rng, domain, leaf)
    if rng.random() < 0.04:
        title = rng.choice(_CJK_TITLES[domain])
        if rng.random() < 0.5:
            title += f" ({s['A']} {s['N']})"
    else:
        title = rng.choice(_TITLE_PATTERNS[domain]).format(**s)
    # Summary length is the main source of row-to-row length variation; a few are cut off with
    # "..." as scraped product descriptions are.
    k = rng.choices((1, 2, 3, 4), weights=_SUMMARY_WEIGHTS[domain])[0]
    summary = " ".join(tpl.format(**s) for tpl in rng.sample(_SUMMARY[domain], k))
    if rng.random() < 0.25:
        summary = summary[: max(40, int(len(summary) * rng.uniform(0.5, 0.9)))].rstrip() + "..."
    categories = f"{_ROOT[domain]} > {top} > {leaf}"
    line = f"(ID: {item_id}) {title} | {categories} | Rating: {avg:.1f} | {summary}"
    return Item(item_id, title, leaf, categories, avg, summary, line)


@lru_cache(maxsize=None)
def _all_catalogs() -> dict[str, Catalog]:
    # Built together with one id registry so an id never names two items, even across domains.
    used: set[str] = set()
    out: dict[str, Catalog] = {}
    for domain in ("books", "music", "movies"):
        rng = random.Random(f"{GENERATOR_VERSION}|catalog|{domain}")
        items: list[Item] = []
        for _ in range(CATALOG_SIZE[domain]):
            while True:
                iid = _isbn10(rng) if domain == "books" and rng.random() < 0.8 else _asin(rng)
                if iid not in used:
                    used.add(iid)
                    break
            items.append(_make_item(rng, domain, iid, rng.random() >= UNKNOWN_SHARE[domain]))
        known = [it for it in items if it.known]
        by_genre: dict[str, list[Item]] = {}
        for it in known:
            by_genre.setdefault(it.genre, []).append(it)
        out[domain] = Catalog(domain, items, known, [it for it in items if not it.known], by_genre)
    return out


def catalog(domain: str) -> Catalog:
    """The fixed item catalog of ``books``, ``music`` or ``movies``."""
    return _all_catalogs()[domain]


def _sample_excluding(rng: random.Random, pool: Sequence[Item], k: int, exclude: set[str]) -> list[Item]:
    # Drawing k + |exclude| guarantees k survivors without a retry loop.
    k = min(k, len(pool))
    picked = rng.sample(pool, min(len(pool), k + len(exclude)))
    return [it for it in picked if it.item_id not in exclude][:k]


# ----------------------------------------------------------------------------------------------
# Prompt text

_PREAMBLE = (
    "You are an expert recommender system specialising in cross-domain recommendation. "
    "Your task is to analyse a user's interaction history in the source domain ({src}) together with "
    "whatever history they have in the target domain ({tgt}), infer their underlying preferences, "
    "and identify which of the candidate {tgt} items they are most likely to interact with next. "
    "Transfer knowledge across domains carefully: a reader's taste in themes, mood, pacing and era "
    "often carries over to what they listen to or watch, but not always literally. "
    "Exactly one of the candidates is the item the user actually interacted with."
)

_REASONING_GUIDELINES = """## Reasoning Guidelines
1. **Source domain analysis**: Identify recurring genres, themes, authors' styles and the ratings the user gives in the {src} history. Pay more attention to recent and highly rated items.
2. **Target domain signals**: If the user has {tgt} history, treat it as the strongest direct evidence of taste. If it is short or empty, rely on cross-domain transfer.
3. **Cross-domain transfer**: Map the user's {src} preferences onto {tgt} attributes (genre, mood, tempo, era, audience). Explain each mapping explicitly.
4. **Candidate evaluation**: Compare the most plausible candidates against the inferred profile. Consider category, average rating and description. Items shown as "[Item: ...] | Unknown" have no metadata; judge them only by rating and context.
5. **Avoid popularity bias**: Do not pick an item only because its average rating is high; the best match to this user matters most.
6. **Be decisive**: Commit to one item and justify it concisely."""

_CONFIDENCE_GUIDELINES = """## Confidence Score Guidelines
Give a confidence score from 1 to 10 for your recommendation:
- 9-10: The candidate matches the user's dominant preferences in both domains; very likely to be rated 5 stars.
- 7-8: Strong match on genre and mood with minor uncertainty; likely rated 4 stars or more.
- 5-6: Partial match; the user may enjoy it but other candidates are comparable.
- 3-4: Weak evidence; the recommendation relies mostly on cross-domain assumptions.
- 1-2: Almost no supporting evidence.
The score should reflect how strongly the user is expected to like the item (roughly twice the expected star rating)."""

_OUTPUT_FORMAT = """## Output Format
First reason step by step inside a <think> block with exactly these three parts:
**Source Domain Pattern Analysis:** what the {src} history says about the user.
**Cross-Domain Transfer Logic:** how those preferences carry over to {tgt}.
**Candidate Evaluation:** which candidates fit and why the chosen one fits best.
Then, after </think>, output a single JSON object in a ```json code block:
{{"rank": 1, "item_id": "<candidate ID>", "title": "<candidate title>", "confidence_score": <1-10>, "rationale": "<one or two sentences>"}}
The item_id must be copied exactly from the candidate list."""

_YOUR_TASK = """## Your Task
Based on the user's {src} and {tgt} history above, recommend the **top 10** candidate items this user is most likely to interact with, ordered from most to least likely. Reason step by step inside a <think> block first (source domain patterns, cross-domain transfer, candidate evaluation). Then output a JSON array of exactly 10 objects in a ```json code block:
[{{"rank": 1, "item_id": "<candidate ID>", "title": "<candidate title>", "confidence_score": <1-10>, "rationale": "<short reason>"}}, ..., {{"rank": 10, ...}}]
Every item_id must be copied exactly from the candidate list above; do not invent items."""


@lru_cache(maxsize=None)
def _fixed_sections(domain: str, evaluation: bool, template: bool = False) -> tuple[str, str]:
    tgt = (TEMPLATE_TARGET_DOMAIN if template else TARGET_DOMAIN)[domain]
    head = (f"# Expert Cross-Domain Recommendation System\n\n{_PREAMBLE.format(src=SOURCE_DOMAIN, tgt=tgt)}\n\n"
            f"## Input Parameters\n- Source Domain: {SOURCE_DOMAIN}\n- Target Domain: {tgt}\n\n"
            f"## User Interaction History\n\n")
    if template:
        head = head.replace("## User Interaction History\n\n", "## User Interaction History\n" + _TEMPLATE_HISTORY_NOTE)
    parts = [_REASONING_GUIDELINES, _CONFIDENCE_GUIDELINES, _YOUR_TASK if evaluation else _OUTPUT_FORMAT]
    tail = "\n\n".join(p.format(src=SOURCE_DOMAIN, tgt=tgt) for p in parts)
    return head, tail


_TEMPLATE_HISTORY_NOTE = "Every past item lists its title, categories, the user's own rating and a short summary.\n\n"
_TEMPLATE_FORMAT_LINE = "(Format: - {title} | {categories} | Rating: {rating} | {summary})"
_TEMPLATE_CANDIDATE_NOTE = "Every candidate lists its title, categories, average rating and a short summary."


def _build_template_prompt(domain: str, book_lines: list[str], target_lines: list[str],
                           candidate_lines: list[str]) -> str:
    """The evaluation template's layout (see the module docstring), with this module's wording."""
    head, tail = _fixed_sections(domain, True, True)
    tgt = TEMPLATE_TARGET_DOMAIN[domain]
    return "".join((
        head,
        f"### User's {SOURCE_DOMAIN} History:\n", "\n".join(book_lines), "\n", _TEMPLATE_FORMAT_LINE, "\n\n",
        f"### User's {tgt} History:\n", "\n".join(target_lines) + "\n" if target_lines else NO_HISTORY_LINE + "\n",
        _TEMPLATE_FORMAT_LINE, "\n\n",
        f"## List of Available Candidate Items (Total {N_CANDIDATES}):\n", _TEMPLATE_CANDIDATE_NOTE, "\n[\n",
        "\n".join("  " + ln for ln in candidate_lines), "\n]\n\n", tail,
    ))


def _build_prompt(domain: str, evaluation: bool, book_lines: list[str], target_lines: list[str],
                  candidate_lines: list[str]) -> str:
    head, tail = _fixed_sections(domain, evaluation)
    tgt = TARGET_DOMAIN[domain]
    cand_header = (f"## List of Available Candidate Items (Total {N_CANDIDATES}):" if evaluation
                   else f"## List of Available Candidate Items ({N_CANDIDATES} items):")
    return "".join((
        head,
        f"### User's {SOURCE_DOMAIN} History (Source Domain):\n", "\n".join(book_lines), "\n\n",
        f"### User's {tgt} History (Target Domain):\n", "\n".join(target_lines) if target_lines else NO_HISTORY_LINE,
        "\n\n", cand_header, "\n", "\n".join(candidate_lines), "\n\n", tail,
    ))


# ----------------------------------------------------------------------------------------------
# Target text (the reasoning and the JSON pick)

_SRC_SENTS = [
    "The user has {nb} {src} interactions, and the clearest cluster is {bg1}, with {bg2} as a secondary thread.",
    "Titles such as “{b1}” and “{b2}” point to a reader who values {M} storytelling and strong atmosphere.",
    "Their average {src} rating is {brate}, so they rate generously but still separate favourites from misses.",
    "The highest-rated books ({b3} among them) share {M} tones and a focus on character over plot mechanics.",
    "Lower ratings go to items outside {bg1}, which suggests the preference is genuine rather than incidental.",
    "There is a noticeable pull toward {M2} material in the most recent interactions, e.g. “{b_last}”.",
    "Across the history the user keeps returning to themes of {TH}, which is a strong signal of taste.",
    "Several entries come from series or long-running authors, so loyalty to a familiar voice matters to this user.",
    "The mix of {bg1} and {bg2} hints at someone who likes immersive worlds but also grounded, emotional arcs.",
    "Items without metadata in the history carry little signal, so the analysis leans on the described titles.",
    "Recent reads skew shorter and more {M2}, which may reflect a shift in mood rather than a new genre.",
    "The user seldom rates below three stars, so a four-star rating here still marks moderate enthusiasm.",
]
_XFER_SENTS = [
    "Readers of {bg1} often gravitate toward {tg} in {tgt}, because both reward patience and atmosphere.",
    "The {M} tone of their reading maps naturally onto {tg}, and to a lesser degree onto {tg2}.",
    "Preference for {TH} in books suggests an appetite for {tgt} items with a clear emotional arc.",
    "Cross-domain evidence is strongest where genre labels align: {bg1} -> {tg} is a well-trodden path.",
    "Because the user rewards craftsmanship over novelty, well-reviewed {tg} items are safer than experimental ones.",
    "The secondary interest in {bg2} widens the net to {tg2}, but it should weigh less than the main cluster.",
    "Series loyalty in {src} translates into a liking for cohesive, album-length or season-length {tgt} experiences.",
    "Average ratings around {brate} imply the user will respond best to items with similarly strong reception.",
]
_XFER_BY_TYPE = {
    "overlapping": [
        "The {tgt} history ({nt} items, e.g. “{t1}”) confirms the transfer: it is dominated by {tg}.",
        "Because the user already has {nt} {tgt} interactions, the direct signal outweighs the cross-domain prior.",
    ],
    "cold_start": [
        "With only {nt} prior {tgt} interaction(s), such as “{t1}”, the target-domain signal is thin but consistent with {tg}.",
        "The sparse {tgt} history ({nt} item(s)) means the {src} profile has to carry most of the inference.",
    ],
    "source_only": [
        "The user has no {tgt} history at all, so the recommendation rests entirely on cross-domain transfer.",
        "Without any {tgt} interactions, the safest bet is the candidate whose genre and mood mirror the {src} profile.",
    ],
}
_NEG_REASONS = [
    "the genre fits but the {M} tone clashes with the user's preferences",
    "well rated, yet nothing in the history points to {neg_genre}",
    "close in category, but the description suggests a lighter, more commercial style",
    "a reasonable fallback; weaker alignment with the dominant {bg1} pattern",
    "no metadata is available, so it cannot be matched beyond its rating",
    "popular, but popularity alone is not evidence for this user",
    "fits the secondary interest in {bg2} only loosely",
    "similar mood, but the user's ratings favour more {M2} material",
]
_GT_REASONS = [
    "its {tg} profile and {M} character match both the {src} pattern and the target signal",
    "it is the only strong candidate that combines {tg} with the {M2} mood seen in recent reads",
    "its description echoes the themes of {TH} that recur throughout the history",
]
_CLOSERS = [
    "Weighing these, “{gt_title}” ({gt_id}) is the best match, with a confidence of {conf}.",
    "The final choice is “{gt_title}” ({gt_id}); the evidence supports a confidence score of {conf}.",
    "Overall, “{gt_title}” stands out as the most coherent continuation of this user's taste (confidence {conf}).",
]
_RATIONALES = [
    "Its {tg} style and {M} tone mirror the user's preference for {bg1} in {src}.",
    "It best matches the user's {bg1} reading and their {tgt} history, combining {M} mood with strong reception.",
    "The user's love of {TH} in {src} carries over to this {tg} title, which is also highly rated.",
    "Strong cross-domain fit: {bg1} readers tend to enjoy {tg}, and this is the closest candidate to that profile.",
]


def _conf_text(conf: float) -> str:
    return f"{conf:g}"


def _build_output(rng: random.Random, ctx: dict[str, Any], utype_group: str, negs: list[Item],
                  gt: Item, conf: float) -> tuple[str, int]:
    src_part = " ".join(s.format(**ctx) for s in rng.sample(_SRC_SENTS, rng.randint(4, 8)))
    x = rng.sample(_XFER_SENTS, rng.randint(3, 6)) + rng.sample(_XFER_BY_TYPE[utype_group], rng.randint(1, 2))
    rng.shuffle(x)
    xfer_part = " ".join(s.format(**ctx) for s in x)
    bullets = []
    for it in negs:
        label = f"“{it.title}” ({it.item_id})" if it.known else f"[Item: {it.item_id}]"
        reason = ("no metadata is available, so it cannot be matched beyond its rating" if not it.known
                  else rng.choice(_NEG_REASONS).format(neg_genre=it.genre, **ctx))
        bullets.append(f"- {label}: {reason}.")
    gt_bullet = f"- “{gt.title}” ({gt.item_id}): {rng.choice(_GT_REASONS).format(**ctx)}."
    bullets.insert(rng.randint(0, len(bullets)), gt_bullet)
    intro = (f"Among the {N_CANDIDATES} candidates, the {ctx['tg']} items and a few adjacent genres are the "
             f"realistic contenders; the rest can be dismissed on genre alone.")
    cand_part = "\n".join([intro, *bullets, rng.choice(_CLOSERS).format(**ctx)])
    reasoning = (f"**Source Domain Pattern Analysis:**\n{src_part}\n\n"
                 f"**Cross-Domain Transfer Logic:**\n{xfer_part}\n\n"
                 f"**Candidate Evaluation:**\n{cand_part}")
    pick = {"rank": 1, "item_id": gt.item_id, "title": gt.title, "confidence_score": conf,
            "rationale": rng.choice(_RATIONALES).format(**ctx)}
    text = f"<think>\n{reasoning}\n</think>\n```json\n{json.dumps(pick, ensure_ascii=False)}\n```"
    return text, len(reasoning)


# ----------------------------------------------------------------------------------------------
# Rows

_RATING_VALUES = (5, 4, 3, 2, 1)
_RATING_WEIGHTS = (50, 28, 12, 6, 4)


def _history_sizes(rng: random.Random, user_type: str) -> tuple[int, int, str]:
    if user_type.startswith("overlapping"):
        return rng.randint(5, 15), rng.randint(5, 12), "overlapping"
    if user_type.startswith("cold_start_"):
        n_core = int(user_type.split("_")[2][0])
        return rng.randint(3, 16), n_core - 1, "cold_start"
    return rng.randint(5, 18), 0, "source_only"


def _pick_history(rng: random.Random, cat: Catalog, genres: list[str], n: int, exclude: set[str],
                  share_unknown: float) -> list[Item]:
    out: list[Item] = []
    for _ in range(n):
        for _attempt in range(20):
            r = rng.random()
            if r < share_unknown and cat.unknown:
                it = rng.choice(cat.unknown)
            elif r < share_unknown + (1 - share_unknown) * 0.8:
                it = rng.choice(cat.by_genre[rng.choice(genres)])
            else:
                it = rng.choice(cat.known)
            if it.item_id not in exclude:
                break
        exclude.add(it.item_id)
        out.append(it)
    return out


def _user_id(rng: random.Random) -> str:
    n = rng.choice((13, 13, 20, 27))
    return "A" + "".join(rng.choice(_ALNUM) for _ in range(n))


_GT_FORMS = ("dict", "json", "list", "json_list", "fields")


def _eval_forms(layout: str, base: str, urng_form: str) -> tuple[bool, bool, str]:
    """(template prompt?, nested metadata?, ground-truth form) of a val/test row."""
    if layout == "plain":
        return False, False, {"none": "fields"}.get(urng_form, urng_form)
    if layout == "template":
        return True, True, "json_list"
    lrng = random.Random(base + "|layout")
    return lrng.random() < 0.5, lrng.random() < 0.5, lrng.choice(_GT_FORMS)


def _one_row(i: int, seed: int, domain: str, kind: str, split: str, candidate_set: str,
             layout: str = "plain") -> dict[str, Any]:
    types = TEST_USER_TYPES[domain] if split == "test" else USER_TYPES[(kind, domain)]
    user_type = types[i % len(types)]
    kind_key = "any" if split == "test" else kind
    base = f"{GENERATOR_VERSION}|{seed}|{domain}|{kind_key}|{split}|{i}"
    urng = random.Random(base + "|user")
    crng = random.Random(f"{base}|cand|{candidate_set}")
    orng = random.Random(f"{base}|out|{candidate_set}")
    books, tcat = catalog("books"), catalog(domain)
    tgt = TARGET_DOMAIN[domain]

    # --- the user: independent of the candidate set, so Set A and Set B share it
    user_id = _user_id(urng)
    book_genres = urng.sample([leaf for _, leaf in _GENRES["books"]], urng.randint(1, 3))
    tgenre_pool = sorted({g for bg in book_genres for g in _AFFINITY[domain][bg]})
    target_genres = urng.sample(tgenre_pool, min(len(tgenre_pool), urng.randint(1, 2)))
    nb, nt, group = _history_sizes(urng, user_type)
    seen: set[str] = set()
    gt = urng.choice(tcat.by_genre[target_genres[0]])
    seen.add(gt.item_id)
    book_items = _pick_history(urng, books, book_genres, nb, seen, UNKNOWN_SHARE["books"])
    target_items = _pick_history(urng, tcat, target_genres, nt, seen, UNKNOWN_SHARE[domain])
    list_form = urng.random() < 0.3
    b_ratings = urng.choices(_RATING_VALUES, _RATING_WEIGHTS, k=nb)
    t_ratings = urng.choices(_RATING_VALUES, _RATING_WEIGHTS, k=nt)
    gt_rating_int = urng.choices(_RATING_VALUES, (55, 27, 10, 5, 3))[0]
    conf = float(min(10.0, max(1.0, gt_rating_int * 2 + urng.choice((-1.5, -1.0, -0.5, -0.5, 0.0, 0.0, 0.5)))))
    gt_rating: int | float = float(gt_rating_int) if urng.random() < 0.5 else gt_rating_int
    gt_form = urng.choice(("dict", "json", "none"))
    with_meta = urng.random() < 0.5
    book_lines = [it.history_line(r, list_form) for it, r in zip(book_items, b_ratings)]
    target_lines = [it.history_line(r, list_form) for it, r in zip(target_items, t_ratings)]

    # --- candidates: hard negatives (Set A) + metadata-less + random known, GT at a uniform slot
    n_neg = N_CANDIDATES - 1
    n_hard = crng.randint(20, 35) if candidate_set == "A" else 0
    share = UNKNOWN_SHARE[domain]
    n_unknown = round(crng.gauss(share * n_neg, math.sqrt(n_neg * share * (1 - share))))
    n_unknown = max(0, min(n_neg - n_hard, n_unknown))
    hard = _sample_excluding(crng, tcat.by_genre[gt.genre], n_hard, seen)
    seen.update(it.item_id for it in hard)
    unknown = _sample_excluding(crng, tcat.unknown, n_unknown, seen)
    seen.update(it.item_id for it in unknown)
    rand = _sample_excluding(crng, tcat.known, n_neg - len(hard) - len(unknown), seen)
    negatives = hard + unknown + rand
    crng.shuffle(negatives)
    gt_pos = crng.randrange(N_CANDIDATES)
    candidates = negatives[:gt_pos] + [gt] + negatives[gt_pos:]
    candidate_lines = [it.line for it in candidates]

    evaluation = split != "train"
    template, nested, gt_form = _eval_forms(layout, base, gt_form) if evaluation else (False, False, gt_form)
    if template:
        tgt = TEMPLATE_TARGET_DOMAIN[domain]
        prompt = _build_template_prompt(
            domain, [it.history_line(r, True) for it, r in zip(book_items, b_ratings)],
            [it.history_line(r, True) for it, r in zip(target_items, t_ratings)], candidate_lines)
    else:
        prompt = _build_prompt(domain, evaluation, book_lines, target_lines, candidate_lines)

    known_books = [it for it in book_items if it.known] or books.known[:3]
    liked_books = [it for it, r in zip(book_items, b_ratings) if it.known and r >= 4] or known_books
    s = _slots(orng, domain, gt.genre)
    ctx = dict(
        src=SOURCE_DOMAIN, tgt=tgt, nb=nb, nt=nt, bg1=book_genres[0], bg2=book_genres[-1],
        b1=known_books[0].title, b2=known_books[len(known_books) // 2].title,
        b3=f"“{orng.choice(liked_books).title}”", b_last=known_books[-1].title,
        brate=f"{sum(b_ratings) / max(1, nb):.1f}", tg=gt.genre,
        tg2=target_genres[-1] if target_genres[-1] != gt.genre else orng.choice(tgenre_pool),
        t1=target_items[0].title if target_items and target_items[0].known else "an untitled item",
        M=s["M"], M2=s["M2"], TH=s["TH"], gt_title=gt.title, gt_id=gt.item_id, conf=_conf_text(conf),
    )
    # Discussed negatives: mostly same-genre ones (the hard cases), a metadata-less one sometimes.
    same = [it for it in negatives if it.genre == gt.genre]
    others = [it for it in negatives if it.genre != gt.genre]
    n_disc = orng.randint(3, 6)
    disc = orng.sample(same, min(len(same), orng.randint(1, n_disc)))
    disc += orng.sample(others, min(len(others), n_disc - len(disc)))
    orng.shuffle(disc)
    output, thinking_length = _build_output(orng, ctx, group, disc, gt, conf)

    common = {
        "user_id": user_id, "user_type": user_type, "gt_item_id": gt.item_id, "candidate_set": candidate_set,
        "target_domain": tgt, "source_domain": SOURCE_DOMAIN,
    }
    if not evaluation:
        row: dict[str, Any] = {"instruction": prompt, "input": "", "output": output, **common,
                               "confidence_score": conf, "thinking_length": thinking_length}
        if with_meta:
            row["metadata"] = {"generator": GENERATOR_VERSION, "source_history_count": nb,
                               "target_history_count": nt, "gt_position": gt_pos, "hard_negatives": len(hard)}
        return row
    label = f"Cross-domain recommendation ({SOURCE_DOMAIN} -> {tgt}): rank the top-10 of {N_CANDIDATES} candidates."
    row = {"instruction": label, "input": prompt}
    truth = {"item_id": gt.item_id, "title": gt.title, "rating": gt_rating}
    if nested:
        # the documented val/test form: no target text, row fields in metadata, the truth separate
        row["output"] = ""
        row["ground_truth"] = _truth_form(truth, "json_list" if gt_form == "fields" else gt_form)
        row["metadata"] = {**common, "user_category": group, "candidate_count": N_CANDIDATES}
        return row
    if split == "val":
        row["output"] = output
    row.update(common)
    row.update({"gt_title": gt.title, "gt_rating": gt_rating, "candidate_count": N_CANDIDATES})
    if split == "val":
        row.update({"confidence_score": conf, "thinking_length": thinking_length})
    if gt_form != "fields":
        row["ground_truth"] = _truth_form(truth, gt_form)
    return row


def _truth_form(truth: dict, form: str) -> Any:
    if form == "dict":
        return truth
    if form == "json":
        return json.dumps(truth, ensure_ascii=False)
    if form == "list":
        return [truth]
    if form == "json_list":
        return json.dumps([truth], ensure_ascii=False)
    raise ValueError(f"unknown ground-truth form {form!r}")


def generate_rows(n: int, seed: int = 0, domain: str = "music", kind: str = "dualft", split: str = "train",
                  candidate_set: str = "A", layout: str = "plain") -> list[dict]:
    """``n`` synthetic KitREC rows; identical output for identical arguments on every machine.

    User types cycle round-robin (``USER_TYPES[(kind, domain)]``, or ``TEST_USER_TYPES[domain]`` for
    ``split="test"``), so any multiple of the type count splits evenly.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if candidate_set not in CANDIDATE_SETS:
        raise ValueError(f"candidate_set must be one of {CANDIDATE_SETS}, got {candidate_set!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout != "plain" and split == "train":
        raise ValueError(f"layout {layout!r} describes val/test rows; training rows use the plain layout")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [_one_row(i, seed, domain, kind, split, candidate_set, layout) for i in range(n)]


def _jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows as UTF-8 JSON lines; a ``.gz`` suffix gzips them (with a fixed header, so
    equal rows give equal bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _jsonl_bytes(rows)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                      compresslevel=9, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a plain or gzipped JSONL file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample_rows(name: str) -> list[dict]:
    """Rows of a shipped sample, by file name with or without ``.jsonl.gz``."""
    fname = name if name.endswith(".jsonl.gz") else f"{name}.jsonl.gz"
    return read_jsonl(SAMPLE_DIR / fname)


def regenerate_samples(out_dir: Optional[str | Path] = None) -> list[Path]:
    """Rewrite the shipped sample files (into ``out_dir`` if given) from ``SAMPLE_SPECS``."""
    out = Path(out_dir) if out_dir is not None else SAMPLE_DIR
    return [write_jsonl(out / fname, generate_rows(seed=SAMPLE_SEED, **kw)) for fname, kw in SAMPLE_SPECS]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kitrec_fast.data.synth", description=__doc__.split("\n")[0])
    p.add_argument("--regenerate-samples", action="store_true", help="rewrite kitrec_fast/data/sample/*.jsonl.gz")
    p.add_argument("--out", help="output .jsonl or .jsonl.gz (or the sample directory with --regenerate-samples)")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", choices=DOMAINS, default="music")
    p.add_argument("--kind", choices=KINDS, default="dualft")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--candidate-set", choices=CANDIDATE_SETS, default="A")
    p.add_argument("--layout", choices=LAYOUTS, default="plain", help="val/test row layout (see the module docstring)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.regenerate_samples:
        for path in regenerate_samples(a.out):
            print(f"{path} ({path.stat().st_size:,} bytes)")
    else:
        if not a.out:
            p.error("--out is required unless --regenerate-samples")
        rows = generate_rows(a.n, a.seed, a.domain, a.kind, a.split, a.candidate_set, a.layout)
        print(f"{write_jsonl(a.out, rows)}: {len(rows)} rows")
    print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
