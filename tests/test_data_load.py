import gzip
import json

import pytest

from kitrec_fast.data.load import DatasetLoadError, load_raw

ROWS = [{"user_id": "U1", "instruction": "p\u00e9 \U0001f3b5", "nested": {"a": [1, 2]}}, {"user_id": "U2"}]


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz", "r.json", "r.json.gz", "r.parquet"])
def test_local_formats(tmp_path, name):
    path = tmp_path / name
    if name.startswith("r.jsonl"):
        data = "".join(json.dumps(r) + "\n" for r in ROWS).encode() + b"\n"
    elif name.startswith("r.json"):
        data = json.dumps({"train": ROWS}).encode()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{"user_id": "U1"}, {"user_id": "U2"}]), path)
        assert [r["user_id"] for r in load_raw(str(path))] == ["U1", "U2"]
        return
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert load_raw(str(path)) == ROWS


def test_errors_name_the_option(tmp_path):
    with pytest.raises(DatasetLoadError, match="--dataset.*not found"):
        load_raw(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DatasetLoadError, match=r"row 2 \(1-based; the file line for JSONL\) is not valid JSON"):
        load_raw(str(bad))
    with pytest.raises(DatasetLoadError, match="embedded sample 'nope'"):
        load_raw("embedded:nope")


def test_embedded_samples_resolve():
    from kitrec_fast.data.load import SAMPLE_DIR

    names = sorted(p.name[: -len(".jsonl.gz")] for p in SAMPLE_DIR.glob("*.jsonl.gz"))
    if not names:
        pytest.skip("no embedded samples in this checkout")
    rows = load_raw(f"embedded:{names[0]}")
    assert rows and "user_id" in rows[0]
