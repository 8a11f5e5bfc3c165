"""What the synthetic rows are: domains, kinds, splits, layouts, user types, catalog sizes, samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample"
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
