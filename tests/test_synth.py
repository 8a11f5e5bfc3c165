"""The synthetic generator must look like the real KitREC data to every downstream stage."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from kitrec_fast.data import synth
from kitrec_fast.data.synth import (
    NO_HISTORY_LINE,
    SAMPLE_DIR,
    SAMPLE_SPECS,
    TEST_USER_TYPES,
    USER_TYPES,
    generate_rows,
    read_jsonl,
    regenerate_samples,
    write_jsonl,
)

CAND_RE = re.compile(r"^## List of Available Candidate Items \((?:100 items|Total 100)\):$", re.M)
ID_RE = re.compile(r"^(?:\(ID: ([A-Z0-9]+)\)|\[Item: ([A-Z0-9]+)\])")
HEADERS = [
    "# Expert Cross-Domain Recommendation System",
    "## Input Parameters",
    "## User Interaction History",
    "### User's Books History (Source Domain):",
]


def _prompt(row: dict) -> str:
    return row["input"] if row["input"] else row["instruction"]


def _sections(prompt: str, domain: str) -> tuple[list[str], list[str], list[str]]:
    """(book lines, target lines, candidate lines) split on the documented headers."""
    tgt = synth.TARGET_DOMAIN[domain]
    books_h = "### User's Books History (Source Domain):\n"
    tgt_h = f"### User's {tgt} History (Target Domain):\n"
    m = CAND_RE.search(prompt)
    assert m, "candidate header missing"
    after = prompt[m.end() + 1:]
    cand_block = after[: after.index("\n\n## ")]
    hist = prompt[prompt.index(books_h) + len(books_h): m.start()].rstrip("\n")
    books_block, tgt_block = hist.split("\n\n" + tgt_h)
    return books_block.split("\n"), tgt_block.split("\n"), cand_block.split("\n")


def _candidate_ids(lines: list[str]) -> list[str]:
    ids = []
    for line in lines:
        m = ID_RE.match(line)
        assert m, f"bad candidate line: {line[:80]}"
        ids.append(m.group(1) or m.group(2))
    return ids


@pytest.fixture(scope="module")
def music_rows() -> list[dict]:
    return generate_rows(200, seed=7, domain="music")


@pytest.fixture(scope="module")
def movies_rows() -> list[dict]:
    return generate_rows(200, seed=7, domain="movies")


TRAIN_TYPES = {
    "instruction": str, "input": str, "output": str, "user_id": str, "user_type": str, "gt_item_id": str,
    "candidate_set": str, "target_domain": str, "source_domain": str, "confidence_score": float,
    "thinking_length": int,
}


def test_training_schema(music_rows: list[dict]) -> None:
    with_meta = 0
    for row in music_rows:
        for key, typ in TRAIN_TYPES.items():
            assert isinstance(row[key], typ), key
        assert row["input"] == ""
        assert row["target_domain"] == "Music" and row["source_domain"] == "Books"
        assert row["candidate_set"] == "A"
        assert 1.0 <= row["confidence_score"] <= 10.0
        assert re.fullmatch(r"[A-Z0-9]+", row["gt_item_id"]) and re.fullmatch(r"A[A-Z0-9]+", row["user_id"])
        if "metadata" in row:
            with_meta += 1
            assert isinstance(row["metadata"], dict)
    assert 0 < with_meta < len(music_rows)


def test_prompt_layout(music_rows: list[dict], movies_rows: list[dict]) -> None:
    for domain, rows in (("music", music_rows), ("movies", movies_rows)):
        tgt = synth.TARGET_DOMAIN[domain]
        for row in rows[:20]:
            p = row["instruction"]
            ordered = [HEADERS[0], HEADERS[1], "- Source Domain: Books", f"- Target Domain: {tgt}",
                       HEADERS[2], HEADERS[3], f"### User's {tgt} History (Target Domain):",
                       "## List of Available Candidate Items (100 items):", "## Reasoning Guidelines",
                       "## Confidence Score Guidelines", "## Output Format"]
            positions = [p.index(h) for h in ordered]
            assert positions == sorted(positions)
            assert p.startswith(HEADERS[0]) and "## Your Task" not in p


def test_output_layout(music_rows: list[dict]) -> None:
    pat = re.compile(
        r"\A<think>\n\*\*Source Domain Pattern Analysis:\*\*\n.+\n\n\*\*Cross-Domain Transfer Logic:\*\*\n.+"
        r"\n\n\*\*Candidate Evaluation:\*\*\n.+\n</think>\n```json\n(\{.*\})\n```\Z", re.S)
    for row in music_rows:
        m = pat.match(row["output"])
        assert m, row["output"][:200]
        pick = json.loads(m.group(1))
        assert pick["rank"] == 1 and pick["item_id"] == row["gt_item_id"]
        assert pick["confidence_score"] == row["confidence_score"]
        reasoning = row["output"].split("</think>")[0][len("<think>\n"):-1]
        assert row["thinking_length"] == len(reasoning)


@pytest.mark.parametrize("split", ["train", "test"])
def test_gt_once_among_100_unique_ids(split: str) -> None:
    positions = []
    for domain in ("music", "movies"):
        for row in generate_rows(300, seed=11, domain=domain, split=split):
            books, target, cands = _sections(_prompt(row), domain)
            ids = _candidate_ids(cands)
            assert len(ids) == 100 and len(set(ids)) == 100
            assert ids.count(row["gt_item_id"]) == 1
            positions.append(ids.index(row["gt_item_id"]))
            # no id repeats anywhere in the prompt (history included)
            hist_ids = re.findall(r"(?:\(ID: |\[Item: )([A-Z0-9]+)[)\]]", "\n".join(books + target))
            assert not set(hist_ids) & set(ids) and len(set(hist_ids)) == len(hist_ids)
    assert 0 in positions and 99 in positions
    # a uniform position: every decile is used and none dominates
    deciles = Counter(p // 10 for p in positions)
    assert len(deciles) == 10 and max(deciles.values()) < 0.2 * len(positions)


def test_user_type_shares() -> None:
    for (kind, domain), types in USER_TYPES.items():
        rows = generate_rows(12 * len(types), seed=1, domain=domain, kind=kind)
        assert Counter(r["user_type"] for r in rows) == {t: 12 for t in types}
    for domain in ("music", "movies"):
        rows = generate_rows(50, seed=1, domain=domain, split="test")
        assert Counter(r["user_type"] for r in rows) == {t: 10 for t in TEST_USER_TYPES[domain]}
    assert len(TEST_USER_TYPES["music"]) == 5 and "source_only_movies" in TEST_USER_TYPES["movies"]


@pytest.mark.parametrize("domain", ["music", "movies"])
def test_history_counts_per_user_type(domain: str) -> None:
    rows = generate_rows(40, seed=5, domain=domain, split="test")
    for row in rows:
        books, target, _ = _sections(_prompt(row), domain)
        ut = row["user_type"]
        if ut.startswith("overlapping"):
            assert len(books) >= 5 and len(target) >= 5
        elif ut.startswith("cold_start_"):
            n_core = int(ut.split("_")[2][0])
            assert len(target) == n_core - 1 and NO_HISTORY_LINE not in target
            assert len(books) >= 1
        else:
            assert ut.startswith("source_only")
            assert target == [NO_HISTORY_LINE] and len(books) >= 5
        for line in books + (target if target != [NO_HISTORY_LINE] else []):
            assert re.match(r"^(- |\(ID: [A-Z0-9]+\) |\[Item: )", line), line[:60]


def test_history_line_forms_both_used(music_rows: list[dict]) -> None:
    firsts = Counter(_sections(r["instruction"], "music")[0][0][:2] for r in music_rows)
    assert firsts["- "] > 0 and firsts["(I"] > 0


def test_deterministic_and_prefix_stable() -> None:
    a = generate_rows(30, seed=3, domain="movies", kind="singleft")
    assert a == generate_rows(30, seed=3, domain="movies", kind="singleft")
    assert a[:10] == generate_rows(10, seed=3, domain="movies", kind="singleft")
    assert a != generate_rows(30, seed=4, domain="movies", kind="singleft")


def test_set_a_and_b_share_ground_truth() -> None:
    a = generate_rows(40, seed=9, domain="music", candidate_set="A")
    b = generate_rows(40, seed=9, domain="music", candidate_set="B")
    hard_a = hard_b = 0
    for ra, rb in zip(a, b):
        assert (ra["gt_item_id"], ra["user_id"], ra["user_type"]) == (rb["gt_item_id"], rb["user_id"], rb["user_type"])
        assert rb["candidate_set"] == "B"
        # hard negatives: Set A shows many more candidates in the ground truth's own leaf category
        for row, which in ((ra, "a"), (rb, "b")):
            _, _, cands = _sections(row["instruction"], "music")
            gt_line = next(c for c in cands if c.startswith(f"(ID: {row['gt_item_id']})"))
            cat = gt_line.split(" | ")[1]
            same = sum(1 for c in cands if c.split(" | ")[1:2] == [cat]) - 1
            if which == "a":
                hard_a += same
            else:
                hard_b += same
    assert hard_a > 5 * hard_b and hard_a / len(a) >= 20


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_schema(split: str) -> None:
    rows = generate_rows(60, seed=2, domain="movies", split=split)
    forms = Counter()
    for row in rows:
        assert len(row["instruction"]) < 200 and "## List" not in row["instruction"]
        p = row["input"]
        assert "## List of Available Candidate Items (Total 100):" in p and "## Your Task" in p
        assert p.index("## Your Task") > p.index("(Total 100)") and "top 10" in p and "JSON array" in p
        assert row["candidate_count"] == 100 and isinstance(row["gt_title"], str) and row["gt_title"]
        assert isinstance(row["gt_rating"], (int, float)) and 1 <= row["gt_rating"] <= 5
        assert ("output" in row) == (split == "val")
        gt = row.get("ground_truth")
        if gt is None:
            forms["none"] += 1
            continue
        forms[type(gt).__name__] += 1
        truth = json.loads(gt) if isinstance(gt, str) else gt
        assert truth == {"item_id": row["gt_item_id"], "title": row["gt_title"], "rating": row["gt_rating"]}
    assert forms["dict"] and forms["str"] and forms["none"]
    assert {type(r["gt_rating"]) for r in rows} == {int, float}


def test_non_ascii_present(music_rows: list[dict], movies_rows: list[dict]) -> None:
    text = "".join(r["instruction"] + r["output"] for r in music_rows[:50] + movies_rows[:50])
    for ch in "éøü“”’—":
        assert ch in text, ch
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]", text), "no CJK text"


@pytest.mark.parametrize("domain,expected,tol", [("movies", 0.43, 0.04), ("music", 0.10, 0.03)])
def test_metadata_less_share(domain: str, expected: float, tol: float) -> None:
    rows = generate_rows(200, seed=4, domain=domain)
    cands = [c for r in rows for c in _sections(r["instruction"], domain)[2]]
    unknown = [c for c in cands if c.startswith("[Item: ")]
    assert all(re.fullmatch(r"\[Item: [A-Z0-9]+\] \| Unknown \| Rating: \d\.\d", c) for c in unknown)
    assert abs(len(unknown) / len(cands) - expected) < tol


def test_item_ids_look_real(music_rows: list[dict]) -> None:
    books = [l for r in music_rows[:50] for l in _sections(r["instruction"], "music")[0]]
    ids = [m.group(1) for l in books if (m := re.match(r"\(ID: ([A-Z0-9]+)\)", l))]
    assert sum(bool(re.fullmatch(r"\d{9}[\dX]", i)) for i in ids) > 0.5 * len(ids)
    cands = [c for r in music_rows[:50] for c in _sections(r["instruction"], "music")[2]]
    assert all(re.fullmatch(r"B0[A-Z0-9]{8}", i) for i in _candidate_ids(cands))


def test_token_lengths_realistic() -> None:
    from tokenizers import Tokenizer

    from kitrec_fast.testkit.tokenizer import qwen3_tokenizer_dir

    # The raw tokenizers object encodes plain text exactly as the transformers wrapper does and
    # loads in ~1 s instead of ~10 s.
    tok = Tokenizer.from_file(str(qwen3_tokenizer_dir() / "tokenizer.json"))
    rows = (generate_rows(4, seed=21, domain="music") + generate_rows(4, seed=21, domain="movies")
            + generate_rows(2, seed=21, domain="movies", kind="singleft")
            + generate_rows(5, seed=21, domain="music", split="test"))
    prompt_lens = [len(tok.encode(_prompt(r)).ids) for r in rows]
    out_lens = [len(tok.encode(r["output"]).ids) for r in rows if "output" in r]
    assert all(5000 <= n <= 8000 for n in prompt_lens), prompt_lens
    assert all(400 <= n <= 900 for n in out_lens), out_lens
    assert len(set(prompt_lens)) == len(prompt_lens)


def test_write_jsonl_plain_and_gz(tmp_path: Path) -> None:
    rows = generate_rows(3, seed=0, domain="music", split="val")
    plain = write_jsonl(tmp_path / "x.jsonl", rows)
    gz = write_jsonl(tmp_path / "sub" / "x.jsonl.gz", rows)
    assert plain.read_text(encoding="utf-8") == gzip.decompress(gz.read_bytes()).decode("utf-8")
    assert read_jsonl(plain) == rows == read_jsonl(gz)
    assert "é" in plain.read_text(encoding="utf-8") or "’" in plain.read_text(encoding="utf-8")
    # the gzip header carries no timestamp, so rewriting gives identical bytes
    again = write_jsonl(tmp_path / "y.jsonl.gz", rows)
    assert again.read_bytes() == gz.read_bytes()


def test_argument_validation() -> None:
    for bad in (dict(domain="books"), dict(kind="x"), dict(split="dev"), dict(candidate_set="C"),
                dict(split="test", layout="fancy"), dict(split="train", layout="template")):
        with pytest.raises(ValueError):
            generate_rows(1, **bad)


def test_template_layout_is_the_documented_evaluation_form() -> None:
    rows = generate_rows(15, seed=6, domain="movies", split="test", layout="template")
    for row in rows:
        assert set(row) == {"instruction", "input", "output", "ground_truth", "metadata"} and row["output"] == ""
        truth = json.loads(row["ground_truth"])
        assert isinstance(truth, list) and len(truth) == 1 and truth[0]["item_id"] == row["metadata"]["gt_item_id"]
        assert row["metadata"]["target_domain"] == "Movies & TV" and row["metadata"]["user_type"] in TEST_USER_TYPES["movies"]
        p = row["input"]
        heads = ["## Input Parameters\n- Source Domain: Books\n- Target Domain: Movies & TV\n",
                 "### User's Books History:\n", "### User's Movies & TV History:\n",
                 "## List of Available Candidate Items (Total 100):\n", "## Reasoning Guidelines", "## Your Task"]
        pos = [p.index(h) for h in heads]
        assert pos == sorted(pos) and "(Source Domain)" not in p and "(Target Domain)" not in p
        assert p.count("\n(Format: - {title}") == 2
        body = p[pos[3]:].split("\n")
        assert body[2] == "[" and body[103] == "]"
        ids = [m.group(1) or m.group(2) for ln in body[3:103]
               if (m := re.fullmatch(r"  (?:\(ID: ([A-Z0-9]+)\) .+|\[Item: ([A-Z0-9]+)\] \| Unknown \| Rating: \d\.\d)", ln))]
        assert len(ids) == 100 and ids.count(truth[0]["item_id"]) == 1


def test_mixed_layout_covers_every_form_and_keeps_each_row() -> None:
    from kitrec_fast.data.schema import normalize_row

    mixed = generate_rows(60, seed=8, domain="music", split="val", layout="mixed")
    plain = generate_rows(60, seed=8, domain="music", split="val")
    forms = set()
    for i, (m, p) in enumerate(zip(mixed, plain)):
        row, ref = normalize_row(m, i, require_target=False), normalize_row(p, i, require_target=False)
        assert (row.user_id, row.user_type, row.gt_item_id, row.gt_rating) == \
            (ref.user_id, ref.user_type, ref.gt_item_id, ref.gt_rating)
        assert row.parsed.candidate_ids == ref.parsed.candidate_ids and len(row.parsed.candidate_ids) == 100
        assert len(row.parsed.source_history.items) == len(ref.parsed.source_history.items)
        gt = m.get("ground_truth")
        form = "fields" if gt is None else type(gt).__name__ + (
            "_of_list" if isinstance(gt, str) and gt.startswith("[") else "")
        forms.add(("(Source Domain)" in m["input"], "metadata" in m and "user_id" not in m, form))
    assert {f[0] for f in forms} == {True, False} and {f[1] for f in forms} == {True, False}
    assert {f[2] for f in forms} == {"dict", "str", "list", "str_of_list", "fields"}


def test_shipped_samples_match_regeneration(tmp_path: Path) -> None:
    fresh = regenerate_samples(tmp_path)
    expected_names = {name for name, _ in SAMPLE_SPECS}
    assert {p.name for p in fresh} == expected_names
    assert expected_names <= {p.name for p in SAMPLE_DIR.iterdir()}
    total = 0
    for path in fresh:
        shipped = SAMPLE_DIR / path.name
        total += shipped.stat().st_size
        assert gzip.decompress(shipped.read_bytes()) == gzip.decompress(path.read_bytes()), (
            f"{path.name} is stale: run python -m kitrec_fast.data.synth --regenerate-samples")
    assert total < 4_000_000
    assert len(read_jsonl(SAMPLE_DIR / "dualft_music.jsonl.gz")) == 200
    from kitrec_fast.data.schema import normalize_row

    test_rows = read_jsonl(SAMPLE_DIR / "test_movies.jsonl.gz")
    parsed = [normalize_row(r, i, require_target=False) for i, r in enumerate(test_rows)]
    assert Counter(r.user_type for r in parsed) == {t: 10 for t in TEST_USER_TYPES["movies"]}
    assert {len(r.parsed.candidate_ids) for r in parsed} == {100}
    # the embedded test sample mixes the documented forms
    assert any("metadata" in r and "user_id" not in r for r in test_rows)
    assert any("### User's Movies & TV History:\n" in r["input"] for r in test_rows)


def test_generation_speed() -> None:
    import time

    synth.catalog("music")
    t0 = time.perf_counter()
    generate_rows(600, seed=0, domain="music")
    # 12,000 rows must take well under 30 s; 600 rows at that pace is < 1.5 s (generous for slow CI)
    assert time.perf_counter() - t0 < 3.0
