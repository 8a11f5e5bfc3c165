"""One synthetic row from (seed, domain, kind, split, index, candidate set, layout)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from kitrec_fast.data.synth.catalog import Catalog, Item, sample_excluding, slots, catalog
from kitrec_fast.data.synth.prompt import build_prompt, build_template_prompt
from kitrec_fast.data.synth.spec import (
    CANDIDATE_SETS, DOMAINS, GENERATOR_VERSION, KINDS, LAYOUTS, N_CANDIDATES, SOURCE_DOMAIN, SPLITS,
    TARGET_DOMAIN, TEMPLATE_TARGET_DOMAIN, TEST_USER_TYPES, UNKNOWN_SHARE, USER_TYPES,
)
from kitrec_fast.data.synth.target import build_output, conf_text
from kitrec_fast.data.synth.words import AFFINITY, ALNUM, GENRES

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
    return "A" + "".join(rng.choice(ALNUM) for _ in range(n))


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
    book_genres = urng.sample([leaf for _, leaf in GENRES["books"]], urng.randint(1, 3))
    tgenre_pool = sorted({g for bg in book_genres for g in AFFINITY[domain][bg]})
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
    hard = sample_excluding(crng, tcat.by_genre[gt.genre], n_hard, seen)
    seen.update(it.item_id for it in hard)
    unknown = sample_excluding(crng, tcat.unknown, n_unknown, seen)
    seen.update(it.item_id for it in unknown)
    rand = sample_excluding(crng, tcat.known, n_neg - len(hard) - len(unknown), seen)
    negatives = hard + unknown + rand
    crng.shuffle(negatives)
    gt_pos = crng.randrange(N_CANDIDATES)
    candidates = negatives[:gt_pos] + [gt] + negatives[gt_pos:]
    candidate_lines = [it.line for it in candidates]

    evaluation = split != "train"
    template, nested, gt_form = _eval_forms(layout, base, gt_form) if evaluation else (False, False, gt_form)
    if template:
        tgt = TEMPLATE_TARGET_DOMAIN[domain]
        prompt = build_template_prompt(
            domain, [it.history_line(r, True) for it, r in zip(book_items, b_ratings)],
            [it.history_line(r, True) for it, r in zip(target_items, t_ratings)], candidate_lines)
    else:
        prompt = build_prompt(domain, evaluation, book_lines, target_lines, candidate_lines)

    known_books = [it for it in book_items if it.known] or books.known[:3]
    liked_books = [it for it, r in zip(book_items, b_ratings) if it.known and r >= 4] or known_books
    s = slots(orng, domain, gt.genre)
    ctx = dict(
        src=SOURCE_DOMAIN, tgt=tgt, nb=nb, nt=nt, bg1=book_genres[0], bg2=book_genres[-1],
        b1=known_books[0].title, b2=known_books[len(known_books) // 2].title,
        b3=f"“{orng.choice(liked_books).title}”", b_last=known_books[-1].title,
        brate=f"{sum(b_ratings) / max(1, nb):.1f}", tg=gt.genre,
        tg2=target_genres[-1] if target_genres[-1] != gt.genre else orng.choice(tgenre_pool),
        t1=target_items[0].title if target_items and target_items[0].known else "an untitled item",
        M=s["M"], M2=s["M2"], TH=s["TH"], gt_title=gt.title, gt_id=gt.item_id, conf=conf_text(conf),
    )
    # Discussed negatives: mostly same-genre ones (the hard cases), a metadata-less one sometimes.
    same = [it for it in negatives if it.genre == gt.genre]
    others = [it for it in negatives if it.genre != gt.genre]
    n_disc = orng.randint(3, 6)
    disc = orng.sample(same, min(len(same), orng.randint(1, n_disc)))
    disc += orng.sample(others, min(len(others), n_disc - len(disc)))
    orng.shuffle(disc)
    output, thinking_length = build_output(orng, ctx, group, disc, gt, conf)

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
