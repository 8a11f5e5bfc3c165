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

Modules, in the order a row is made: ``spec`` (what can be asked for), ``words`` (word pools),
``catalog`` (items), ``prompt`` and ``target`` (the two texts), ``rows`` (one row), ``files``
(JSONL and the shipped samples); ``python -m kitrec_fast.data.synth`` writes rows.
"""

from kitrec_fast.data.synth.catalog import Catalog, Item, catalog
from kitrec_fast.data.synth.files import read_jsonl, regenerate_samples, sample_rows, write_jsonl
from kitrec_fast.data.synth.rows import generate_rows
from kitrec_fast.data.synth.spec import (
    CANDIDATE_SETS, CATALOG_SIZE, DOMAINS, GENERATOR_VERSION, KINDS, LAYOUTS, N_CANDIDATES, NO_HISTORY_LINE,
    SAMPLE_DIR, SAMPLE_SEED, SAMPLE_SPECS, SOURCE_DOMAIN, SPLITS, TARGET_DOMAIN, TEMPLATE_TARGET_DOMAIN,
    TEST_USER_TYPES, UNKNOWN_SHARE, USER_TYPES,
)

__all__ = [
    "CANDIDATE_SETS", "CATALOG_SIZE", "DOMAINS", "GENERATOR_VERSION", "KINDS", "LAYOUTS", "N_CANDIDATES",
    "NO_HISTORY_LINE", "SAMPLE_DIR", "SAMPLE_SEED", "SAMPLE_SPECS", "SOURCE_DOMAIN", "SPLITS", "TARGET_DOMAIN",
    "TEMPLATE_TARGET_DOMAIN", "TEST_USER_TYPES", "UNKNOWN_SHARE", "USER_TYPES", "Catalog", "Item", "catalog",
    "generate_rows", "read_jsonl", "regenerate_samples", "sample_rows", "write_jsonl",
]
