"""KitREC rows in the layouts the original evaluation documents describe, written from the layout facts.

Sources of the facts (not of the text): the evaluation prompt template (title line, ``## Input
Parameters`` with ``- Source Domain:`` / ``- Target Domain:``, history headers *without* the
``(Source Domain)`` suffix, a ``(Format: ...)`` line after each history list, the candidate
header ``(Total 100):``, a note line, the candidates between lone ``[`` / ``]`` lines with
indented ``(ID: X)`` item lines, then the reasoning and output sections), and the row layouts
(training rows with a nested ``metadata`` dict; val/test rows ``{instruction, input, output: "",
ground_truth, metadata}`` with ``ground_truth`` as a JSON string of a one-element list; the
separate ``gt_*`` fields; ``Movies & TV`` as the target domain name). All wording is our own.
"""

from __future__ import annotations

import json
from typing import Optional

TEMPLATE_HEAD = (
    "# Expert Cross-Domain Recommendation System\n\n"
    "You rank items for one shopper by carrying what they liked in one catalogue over to another.\n"
    "Pick the **Top 10** candidates this shopper is most likely to choose next.\n\n"
    "## Input Parameters\n- Source Domain: {src}\n- Target Domain: {tgt}\n"
    "- Task: Order the ten best candidates by how well they fit.\n\n"
    "## User Interaction History\n"
    "Each past item shows its title, categories, the shopper's rating and a short summary.\n\n"
)
FORMAT_LINE = "(Format: - {title} | {categories} | Rating: {rating} | {summary})\n"
CANDIDATE_NOTE = "Each candidate shows its title, categories, average rating and a short summary.\n"
TEMPLATE_TAIL = (
    "## Reasoning Guidelines (Thinking Process)\nThink before answering, in three phases.\n\n"
    "### Phase 1: Pattern Recognition (Source Domain Analysis)\n- What does the {src} history say?\n\n"
    "### Phase 2: Cross-Domain Knowledge Transfer\n- Carry it over to {tgt}.\n\n"
    "### Phase 3: Candidate Evaluation & Selection\n- Score all 100 candidates; keep ten. (ID: NOTACAND1)\n\n"
    "## Output Format\nAnswer with a JSON array of ten objects (rank, item_id, title, confidence_score, "
    "rationale); every item_id must come from the candidate list.\n"
)


def iid(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


def history_line(item: str, words: int = 6) -> str:
    """A history item in the template's list form (no id), or an unknown item (id only)."""
    return f"- Quiet Title {item[-3:]} | Fiction > Literary | Rating: 4.0 | {' '.join(['calm'] * words)}\n"


def candidate_line(item: str, words: int = 6, unknown: bool = False) -> str:
    if unknown:
        return f"  [Item: {item}] | Unknown | Rating: 3.0\n"
    return f"  (ID: {item}) Album {item[-3:]} | CDs & Vinyl > Folk | Rating: 4.5 | {' '.join(['warm'] * words)}\n"


def template_prompt(n_source: int = 5, n_target: int = 3, n_candidates: int = 100, gt_pos: int = 37,
                    src: str = "Books", tgt: str = "Music", words: int = 6, target_first: bool = False,
                    suffix: bool = False, params: bool = True) -> tuple[str, str, list[str]]:
    """(prompt, ground-truth id, candidate ids) in the evaluation template's layout.

    ``target_first`` puts the target history before the source history (only the domain names
    tell them apart); ``suffix`` adds the ``(Source Domain)`` / ``(Target Domain)`` header suffix;
    ``params=False`` leaves the domain lines out of ``## Input Parameters``.
    """
    head = TEMPLATE_HEAD.format(src=src, tgt=tgt)
    if not params:
        head = head.replace(f"- Source Domain: {src}\n- Target Domain: {tgt}\n", "")

    def section(domain: str, side: str, prefix: str, n: int) -> str:
        label = f" ({side} Domain)" if suffix else ""
        items = "".join(history_line(iid(prefix, i), words) for i in range(n))
        return f"### User's {domain} History{label}:\n{items}{FORMAT_LINE}\n"

    sections = [section(src, "Source", "S", n_source), section(tgt, "Target", "T", n_target)]
    if target_first:
        sections.reverse()
    cands = [iid("C", i) for i in range(n_candidates)]
    lines = "".join(candidate_line(c, words, unknown=(i % 7 == 3 and i != gt_pos)) for i, c in enumerate(cands))
    prompt = (head + "".join(sections)
              + f"## List of Available Candidate Items (Total {n_candidates}):\n" + CANDIDATE_NOTE
              + "[\n" + lines + "]\n\n" + TEMPLATE_TAIL.format(src=src, tgt=tgt))
    return prompt, cands[gt_pos], cands


def training_prompt(tgt: str = "Movies & TV", n_candidates: int = 100, gt_pos: int = 11) -> tuple[str, str, list[str]]:
    """A training prompt: suffixed headers, ``(N items):`` header, one ``(ID: X)`` line per candidate."""
    cands = [iid("M", i) for i in range(n_candidates)]
    prompt = (
        "# Expert Cross-Domain Recommendation System\n\nYou recommend one item.\n\n"
        f"## Input Parameters\n- Source Domain: Books\n- Target Domain: {tgt}\n\n## User Interaction History\n"
        "### User's Books History (Source Domain):\n"
        + "".join(f"(ID: {iid('B', i)}) Book {i} | Books > Mystery | Rating: 5.0 | twisty\n" for i in range(4))
        + f"\n### User's {tgt} History (Target Domain):\n"
        + "[Item: B00E9E5EEK] | Unknown | Rating: 2.0\n"
        + f"(ID: {iid('V', 1)}) Film 1 | Movies & TV > Drama | Rating: 4.0 | slow\n\n"
        + f"## List of Available Candidate Items ({n_candidates} items):\n"
        + "".join(f"(ID: {c}) Film {c[-2:]} | Movies & TV > Drama | Rating: 3.5 | tense\n" for c in cands)
        + "\n## Output Format\nReason in <think>, then one JSON object with item_id.\n"
    )
    return prompt, cands[gt_pos], cands


def training_target(gt_id: str) -> str:
    pick = {"rank": 1, "item_id": gt_id, "title": "Film", "confidence_score": 8.5, "rationale": "tense drama"}
    return ("<think>\n**Source Domain Pattern Analysis:**\nMystery reader.\n\n**Cross-Domain Transfer Logic:**\n"
            "Mysteries map to tense dramas.\n\n**Candidate Evaluation:**\nThe pick is the tensest.\n</think>\n"
            "```json\n" + json.dumps(pick) + "\n```")


def metadata(user_id: str, user_type: str, gt_id: Optional[str], tgt: str = "Movies & TV", **more) -> dict:
    meta = {"user_id": user_id, "user_type": user_type, "user_category": user_type.split("_")[0],
            "target_domain": tgt, "source_domain": "Books", "target_core": 2, "books_core": 9,
            "candidate_set": "B", "thinking_length": 120, "confidence_score": 8.5, "generation_time_sec": 3.2}
    if gt_id is not None:
        meta["gt_item_id"] = gt_id
    meta.update(more)
    return meta


def training_row_nested(user_id: str = "AMETA1") -> dict:
    """Training row with every field but the texts inside ``metadata`` (``Movies & TV`` target)."""
    prompt, gt, _ = training_prompt()
    return {"instruction": prompt, "input": "", "output": training_target(gt),
            "metadata": metadata(user_id, "cold_start_2core_movies", gt)}


GT_FORMS = ("dict", "json_dict", "list", "json_list", "fields")


def eval_row(gt_form: str, user_id: str = "AEVAL1", nested: bool = True, output: Optional[str] = "",
             **prompt_kw) -> dict:
    """A val/test row: short ``instruction``, prompt in ``input``, ground truth in the form ``gt_form``."""
    prompt_kw.setdefault("tgt", "Movies & TV")
    prompt, gt, _ = template_prompt(**prompt_kw)
    truth = {"item_id": gt, "title": "Album", "rating": 4.0}
    row: dict = {"instruction": "Rank the top 10 candidates for this user.", "input": prompt}
    if output is not None:
        row["output"] = output
    if gt_form == "dict":
        row["ground_truth"] = truth
    elif gt_form == "json_dict":
        row["ground_truth"] = json.dumps(truth)
    elif gt_form == "list":
        row["ground_truth"] = [truth]
    elif gt_form == "json_list":
        row["ground_truth"] = json.dumps([truth])
    elif gt_form == "fields":
        row.update(gt_item_id=gt, gt_title="Album", gt_rating=4, gt_category="Folk")
    else:
        raise ValueError(gt_form)
    ident = {"user_id": user_id, "user_type": "overlapping_books_movies"}
    if nested:
        row["metadata"] = metadata(user_id, ident["user_type"], None, tgt=prompt_kw["tgt"])
    else:
        row.update(ident, target_domain=prompt_kw["tgt"], source_domain="Books", candidate_set="A")
    return row
