"""The parser against a table of the messy outputs models actually produce."""

from __future__ import annotations

import pytest

from kitrec_fast.eval.parse import ParseResult, parse_recommendations

CANDS = ["B07FLGJWKB", "B00E9E5EEK", "B01ABCDEF0", "B0C1234567", "B0XYZ98765"]
A, B, C, D, E = CANDS

THINK = "<think>\n**Candidate Evaluation:** B0XYZ98765 looks weak; [{\"item_id\": \"B0XYZ98765\"}]\n</think>\n"


def arr(*ids: str, conf: float | None = None) -> str:
    items = [f'{{"rank": {i + 1}, "item_id": "{x}", "confidence_score": {conf if conf is not None else 9 - i}}}'
             for i, x in enumerate(ids)]
    return "[" + ", ".join(items) + "]"


# (name, text, expected ranked ids, expected flags subset)
CASES = [
    ("think + fenced array", THINK + "```json\n" + arr(A, B, C) + "\n```", [A, B, C],
     {"think_closed": True, "has_think": True, "source": "fenced", "confidence": 9.0}),
    ("no think, bare array", arr(B, A), [B, A], {"has_think": False, "source": "bare"}),
    ("think + bare single object", THINK + '{"rank": 1, "item_id": "%s", "confidence_score": 9.5}' % A, [A],
     {"confidence": 9.5, "n_items": 1}),
    ("fenced single object (training layout)",
     THINK + '```json\n{"rank": 1, "item_id": "%s", "title": "x", "confidence_score": 8.0, "rationale": "y"}\n```' % C,
     [C], {"source": "fenced"}),
    ("unlabelled fence", "```\n" + arr(D, E) + "\n```", [D, E], {"source": "fenced"}),
    ("trailing commas", '[{"item_id": "%s",}, {"item_id": "%s"},]' % (A, B), [A, B], {}),
    ("prose around JSON", "Sure! Here are my picks:\n" + arr(C, A) + "\nHope this helps [1].", [C, A], {}),
    ("stray bracket in prose before JSON", "Answer [see below: " + arr(E), [E], {}),
    ("duplicated ids keep their places", arr(A, B, A, B, C), [A, B, A, B, C], {"n_duplicates": 2, "n_items": 5}),
    ("ids not among candidates", arr("B09NOTHERE", A, "B08MISSING"), [A], {"n_invalid": 2, "n_items": 3}),
    ("ids trimmed, matched case-insensitively, stored as the candidate spells them",
     '["  %s ", "%s"]' % (A, B.lower()), [A, B], {"n_invalid": 0}),
    ("a lower-case repeat of a kept id is a repeat", '["%s", "%s"]' % (A, A.lower()), [A, A], {"n_duplicates": 1}),
    ("ranks out of order: list order wins",
     '[{"rank": 3, "item_id": "%s"}, {"rank": 1, "item_id": "%s"}, {"rank": 2, "item_id": "%s"}]' % (C, A, B),
     [C, A, B], {"ranks_disagree": True}),
    ("bare id strings", f'["{D}", "{A}"]', [D, A], {"confidence": None}),
    ("unfinished think with JSON inside", "<think>\nI pick " + arr(B, C), [B, C],
     {"think_closed": False, "has_think": True}),
    ("unfinished think, array cut off", '<think>\nfinal: [{"item_id": "%s"}, {"item_id": "%s"}, {"item_id": "B0' % (A, B),
     [A, B], {"think_closed": False, "truncated": True}),
    ("JSON only inside a closed think is not an answer", "<think>" + arr(A) + "</think>\nI cannot decide.", [],
     {"parse_failed": True, "think_closed": True}),
    ("last fenced json block wins", "```json\n" + arr(A) + "\n```\nrevised:\n```json\n" + arr(B) + "\n```", [B], {}),
    ("wrapper object", '{"recommendations": [{"item_id": "%s"}, {"item_id": "%s"}]}' % (E, D), [E, D], {}),
    ("trailing prose array ignored when it names no candidate", arr(A, B) + '\nTags: ["jazz", "soul"]', [A, B], {}),
    ("only invalid ids still parses", arr("B09NOTHERE", "B08MISSING"), [],
     {"parse_failed": False, "n_invalid": 2}),
    ("confidence of first kept item", '[{"item_id": "ZZZ", "confidence_score": 1}, {"item_id": "%s", "confidence_score": 7}]' % A,
     [A], {"confidence": 7.0}),
    ("out-of-scale confidence ignored", '[{"item_id": "%s", "confidence_score": 85}]' % A, [A], {"confidence": None}),
    ("string confidence", '[{"item_id": "%s", "confidence_score": "6.5"}]' % A, [A], {"confidence": 6.5}),
]


@pytest.mark.parametrize("name,text,expected,flags", CASES, ids=[c[0] for c in CASES])
def test_messy_outputs(name: str, text: str, expected: list[str], flags: dict) -> None:
    result = parse_recommendations(text, CANDS)
    assert result.ranked_ids == expected
    for key, value in flags.items():
        assert getattr(result, key) == value, key
    if not result.parse_failed:
        assert result.n_items == len(result.entries) == len(expected) + result.n_invalid


GARBAGE = ["", "no json at all", "[[[[{", "}{][", "```json\n```", "[]", "{}", "[1, 2, 3]",
           "<think>", "</think>", None, 12345, '{"item_id": null}', "\x00\xff" * 10, "[" * 5000]


@pytest.mark.parametrize("text", GARBAGE, ids=[repr(g)[:20] for g in GARBAGE])
def test_garbage_never_raises(text: object) -> None:
    result = parse_recommendations(text, CANDS)  # type: ignore[arg-type]
    assert isinstance(result, ParseResult)
    assert result.parse_failed
    assert result.ranked_ids == [] and result.confidence is None


def test_no_candidate_list_accepts_any_id_and_counts_repeats() -> None:
    result = parse_recommendations(arr("X1", "X2", "X1"), None)
    assert result.ranked_ids == ["X1", "X2", "X1"]
    assert result.n_invalid == 0 and result.n_duplicates == 1


def test_confidences_parallel_to_ranked_ids() -> None:
    result = parse_recommendations(arr(A, "NOPE", B), CANDS)
    assert result.ranked_ids == [A, B]
    assert result.confidences == [9.0, 7.0]


def test_entries_keep_every_emitted_id_in_order() -> None:
    result = parse_recommendations('[{"item_id": "nope"}, {"title": "no id"}, {"item_id": 12345}, "%s"]' % A.lower(),
                                   CANDS + ["12345"])
    assert [(e.emitted, e.item_id) for e in result.entries] == [("nope", None), (None, None), ("12345", "12345"),
                                                                 (A.lower(), A)]
    assert result.n_invalid == 2


def test_answer_is_taken_after_the_last_think_close() -> None:
    # Two think blocks, a fenced draft inside the second, then the real (bare) answer: reading
    # from the first </think> would find the fenced draft and prefer it over the answer.
    text = ("<think>first thoughts</think>\n<think>draft:\n```json\n" + arr(E, D) + "\n```\n</think>\n"
            + arr(A, B))
    assert parse_recommendations(text, CANDS).ranked_ids == [A, B]
    # JSON only before the last </think> is no answer at all
    assert parse_recommendations("<think>a</think><think>" + arr(E) + "</think>no json", CANDS).parse_failed


def test_to_dict_round_trips_fields() -> None:
    d = parse_recommendations(arr(A), CANDS).to_dict()
    assert d["ranked_ids"] == [A] and d["parse_failed"] is False
