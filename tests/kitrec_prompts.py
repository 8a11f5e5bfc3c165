"""Hand-made KitREC prompts and rows for the data tests (small, readable, any shape)."""

from __future__ import annotations

import json
from typing import Optional, Union

PREAMBLE = (
    "# Expert Cross-Domain Recommendation System\n\n"
    "You are an expert recommender. Pick the item the user will interact with next.\n\n"
    "## Input Parameters\n- Source Domain: Books\n- Target Domain: {domain}\n\n"
    "## User Interaction History\n\n"
)
TASK = (
    "## Your Task\nPick one candidate.\n\n## Output Format\n"
    "Reason inside <think>, then output JSON with item_id.\n"
)


def item_id(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


def item_line(iid: str, style: str = "id", words: int = 12) -> str:
    body = " ".join(["melodic", "quiet", "album", "with", "strings"] * (words // 5 + 1))[: words * 6]
    if style == "id":
        return f"(ID: {iid}) Title {iid[-3:]} | CDs & Vinyl > Pop | Rating: 4.0 | {body}\n"
    if style == "item":
        return f"[Item: {iid}] | Unknown | Rating: 2.0\n"
    if style == "list":
        return f"- Title {iid[-3:]} | Books > Fiction | Rating: 5.0 | {body}\n"
    raise ValueError(style)


def make_prompt(n_source: int = 5, n_target: int = 3, n_candidates: int = 100,
                gt: Union[str, int] = "middle", header: str = "items", words: int = 12,
                domain: str = "Music", cand_style: str = "id", hist_style: str = "id",
                trailing_newline: bool = False) -> tuple[str, str, list[str]]:
    """A prompt, its ground-truth id, and the candidate ids in order."""
    src = "".join(item_line(item_id("S", i), hist_style, words) for i in range(n_source))
    tgt = "".join(item_line(item_id("T", i), hist_style, words) for i in range(n_target))
    cands = [item_id("C", i) for i in range(n_candidates)]
    pos = {"first": 0, "last": n_candidates - 1, "middle": n_candidates // 2}.get(gt, gt)
    styles = [cand_style if cand_style != "mixed" else ("item" if i % 3 == 0 else "id") for i in range(n_candidates)]
    cand_text = "".join(item_line(c, "id" if i == pos else s, words) for i, (c, s) in enumerate(zip(cands, styles)))
    head = f"## List of Available Candidate Items ({n_candidates} items):\n" if header == "items" \
        else f"## List of Available Candidate Items (Total {n_candidates})\n"
    prompt = (PREAMBLE.format(domain=domain)
              + "### User's Books History (Source Domain):\n" + src + "\n"
              + f"### User's {domain} History (Target Domain):\n" + tgt + "\n"
              + head + cand_text + "\n" + TASK)
    if not trailing_newline:
        prompt = prompt.rstrip("\n")
    return prompt, cands[pos], cands


def make_target(gt_id: str, sentences: int = 6) -> str:
    reasoning = " ".join(f"The reader favours quiet literary fiction, point {i}." for i in range(sentences))
    return ("<think>\n**Source Domain Pattern Analysis:**\n" + reasoning + "\n\n**Cross-Domain Transfer Logic:**\n"
            "Quiet books map to quiet albums.\n\n**Candidate Evaluation:**\nThe chosen album fits best.\n</think>\n"
            "```json\n" + json.dumps({"rank": 1, "item_id": gt_id, "title": "Title", "confidence_score": 9.0,
                                      "rationale": "fits"}) + "\n```")


def make_row(user_id: str = "U1", user_type: str = "overlapping_books_music", target: Optional[str] = None,
             **prompt_kw) -> dict:
    prompt, gt_id, _ = make_prompt(**prompt_kw)
    return {"instruction": prompt, "input": "", "output": make_target(gt_id) if target is None else target,
            "user_id": user_id, "user_type": user_type, "gt_item_id": gt_id, "candidate_set": "A",
            "target_domain": prompt_kw.get("domain", "Music"), "source_domain": "Books",
            "confidence_score": 9.0, "thinking_length": 100}
