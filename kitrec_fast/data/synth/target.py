"""The training target's text: the <think> reasoning and the JSON pick."""

from __future__ import annotations

import json
import random
from typing import Any

from kitrec_fast.data.synth.catalog import Item
from kitrec_fast.data.synth.spec import N_CANDIDATES

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


def conf_text(conf: float) -> str:
    return f"{conf:g}"


def build_output(rng: random.Random, ctx: dict[str, Any], utype_group: str, negs: list[Item],
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


