"""Per-domain item catalogs, built once from fixed seeds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from kitrec_fast.data.synth.spec import CATALOG_SIZE, GENERATOR_VERSION, UNKNOWN_SHARE
from kitrec_fast.data.synth.words import (
    ADJ, ALNUM, CJK_NAMES, CJK_TITLES, FIRST, GENRES, LAST, MOODS, MUSIC_FORMS, NOUN, ORD, PLACE, PLURAL,
    PRAISE, QUALITY, ROLES, ROOT, SUMMARY, SUMMARY_WEIGHTS, TEXTURES, THEMES, TITLE_PATTERNS,
)


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
    return "B0" + "".join(rng.choice(ALNUM) for _ in range(8))


def _person(rng: random.Random) -> str:
    if rng.random() < 0.04:
        return rng.choice(CJK_NAMES)
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _artist(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return f"The {rng.choice(ADJ)} {rng.choice(NOUN)}s"
    if r < 0.45:
        return f"{rng.choice(NOUN)} & the {rng.choice(ADJ)} {rng.choice(NOUN)}s"
    return _person(rng)


def slots(rng: random.Random, domain: str, genre: str) -> dict[str, Any]:
    a, a2 = rng.sample(ADJ, 2)
    n, n2 = rng.sample(NOUN, 2)
    t, t2 = rng.sample(TEXTURES, 2)
    m, m2 = rng.sample(MOODS, 2)
    f, f2 = rng.sample(MUSIC_FORMS, 2)
    q = rng.choice(QUALITY)
    return dict(A=a, A2=a2, N=n, N2=n2, NS=n if n.endswith("s") else n + "s", T=t, T2=t2, M=m, M2=m2,
                F=f, F2=f2, FS=PLURAL.get(f, f + "s"), FS2=PLURAL.get(f2, f2 + "s"), P=rng.choice(PLACE),
                k=rng.randint(2, 12), Q=q, AQ=("An " if q[0] in "aeiou" else "A ") + q, G=genre,
                AM=("An " if m[0] in "aeiou" else "A ") + m, am=("an " if m[0] in "aeiou" else "a ") + m,
                W=_artist(rng) if domain == "music" else _person(rng), W2=_person(rng),
                TH=rng.choice(THEMES), role=rng.choice(ROLES), praise=rng.choice(PRAISE),
                ord=rng.choice(ORD), mins=rng.randint(84, 178))


def _make_item(rng: random.Random, domain: str, item_id: str, known: bool) -> Item:
    avg = round(min(5.0, max(1.0, rng.gauss(4.2, 0.55))), 1)
    if not known:
        return Item(item_id, "", "Unknown", "Unknown", avg, "",
                    f"[Item: {item_id}] | Unknown | Rating: {avg:.1f}")
    top, leaf = rng.choice(GENRES[domain])
    s = slots(rng, domain, leaf)
    if rng.random() < 0.04:
        title = rng.choice(CJK_TITLES[domain])
        if rng.random() < 0.5:
            title += f" ({s['A']} {s['N']})"
    else:
        title = rng.choice(TITLE_PATTERNS[domain]).format(**s)
    # Summary length is the main source of row-to-row length variation; a few are cut off with
    # "..." as scraped product descriptions are.
    k = rng.choices((1, 2, 3, 4), weights=SUMMARY_WEIGHTS[domain])[0]
    summary = " ".join(tpl.format(**s) for tpl in rng.sample(SUMMARY[domain], k))
    if rng.random() < 0.25:
        summary = summary[: max(40, int(len(summary) * rng.uniform(0.5, 0.9)))].rstrip() + "..."
    categories = f"{ROOT[domain]} > {top} > {leaf}"
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


def sample_excluding(rng: random.Random, pool: Sequence[Item], k: int, exclude: set[str]) -> list[Item]:
    # Drawing k + |exclude| guarantees k survivors without a retry loop.
    k = min(k, len(pool))
    picked = rng.sample(pool, min(len(pool), k + len(exclude)))
    return [it for it in picked if it.item_id not in exclude][:k]
