"""The instruction prompt's text: fixed sections and the two history/candidate layouts."""

from __future__ import annotations

from functools import lru_cache

from kitrec_fast.data.synth.spec import (
    NO_HISTORY_LINE, N_CANDIDATES, SOURCE_DOMAIN, TARGET_DOMAIN, TEMPLATE_TARGET_DOMAIN,
)

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


def build_template_prompt(domain: str, book_lines: list[str], target_lines: list[str],
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


def build_prompt(domain: str, evaluation: bool, book_lines: list[str], target_lines: list[str],
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
