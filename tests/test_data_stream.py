"""The prepare step streams a JSON-lines file in blocks: the result must not depend on the block size,
and reading the file row by row must give what the same rows in memory give."""

import gzip
import json

import numpy as np

from kitrec_fast.config import DataConfig
from kitrec_fast.data import pipeline, synth


def _columns(ds):
    return {c: ds[c] for c in ds.column_names}


def test_streamed_file_equals_in_memory_rows_for_any_block_size(qwen3_tokenizer, tmp_path, monkeypatch):
    rows = synth.generate_rows(23, seed=11, domain="music", kind="dualft", split="train")
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write("\n\n")  # blank lines at the end are not rows
    cfg = DataConfig(dataset=str(path), val_fraction=0.25, max_length=4096)
    reference = pipeline.prepare(cfg, qwen3_tokenizer, rows=rows, verify_rows=4)
    # 23 rows in blocks of 5: a partial last block, and a split drawn across blocks
    monkeypatch.setattr(pipeline, "WARM_BLOCK", 5)
    streamed = pipeline.prepare(cfg, qwen3_tokenizer, verify_rows=4)
    assert streamed.report["rows"]["loaded"] == 23
    assert streamed.report["tokenization"]["rows_verified_whole"] == 4
    for split in ("train", "validation"):
        a, b = _columns(getattr(reference, split)), _columns(getattr(streamed, split))
        assert a.keys() == b.keys()
        for col in a:
            assert a[col] == b[col], (split, col)
    # the split is the stratified one over all rows, whatever the blocks: 25% of each user type
    types = np.array(streamed.validation["user_type"])
    assert sorted(set(types)) == sorted({r["user_type"] for r in rows})
    # chunks_tokenized depends on what the shared renderer cached before (probes, other calls)
    for rep in (reference.report, streamed.report):
        rep["tokenization"].pop("chunks_tokenized")
    drop = {"seconds", "dataset", "config"}
    assert {k: v for k, v in reference.report.items() if k not in drop} == \
        {k: v for k, v in streamed.report.items() if k not in drop}
