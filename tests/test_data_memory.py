"""Memory of the prepare step does not grow with the rows: the chunk cache is bounded, and the
tokenized rows are never read back through their memory mapping (every page read there stays in
the process's resident memory: the whole data, by the end of a save)."""

import re
from pathlib import Path

from kitrec_fast.config import DataConfig
from kitrec_fast.data import synth
from kitrec_fast.data.pipeline import load_prepared, prepare, save_prepared
from kitrec_fast.render.chat import ChatRenderer, ChunkCache


def test_chunk_cache_is_bounded_and_keeps_what_repeats(qwen3_tokenizer):
    renderer = ChatRenderer(qwen3_tokenizer)  # its own cache, not the shared renderer's
    renderer._cache = ChunkCache(generation=200)
    shared = "## Your Task\nRank the candidates for this user.\n"
    texts = [f"{shared}(ID: B{i:07d}) Song number {i} | Rock | Rating: 4.0\n" for i in range(2000)]
    before = renderer.chunks_tokenized
    counts = [renderer.count(t) for t in texts]
    # two generations at most (each may pass its size by one call's chunks), whatever the number of texts
    assert len(renderer._cache) <= 2 * (200 + 3)
    # the two shared chunks stay cached through every rotation: each text costs one new chunk
    assert renderer.chunks_tokenized - before == 2000 + 2
    # evicted chunks come back exact
    for k in (0, 1, 999, 1999):
        expected = qwen3_tokenizer(texts[k], add_special_tokens=False)["input_ids"]
        assert counts[k] == len(expected)
        assert renderer.encode(texts[k]).tolist() == expected


def _mapping_kib(path: str) -> tuple[int, int]:
    """(size, resident) in KiB of this process's mappings of ``path``, from /proc/self/smaps."""
    size = rss = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line ends with its file
            inside = line.split()[-1] == path
        elif inside and line.startswith(("Size:", "Rss:")):
            kib = int(line.split()[1])
            size, rss = (size + kib, rss) if line.startswith("Size:") else (size, rss + kib)
    return size, rss


def test_split_and_save_do_not_read_the_rows_through_their_mapping(qwen3_tokenizer, tmp_path):
    rows = synth.generate_rows(24, seed=5, domain="music", kind="dualft", split="train")
    prepared = prepare(DataConfig(dataset="unused", val_fraction=0.25, max_length=4096), qwen3_tokenizer,
                       rows=rows, verify_rows=2)
    path = prepared.files["train"][0]
    size_kib = Path(path).stat().st_size // 1024
    assert size_kib > 500  # ~18 rows of ~4k tokens, ids and labels
    out = save_prepared(prepared, tmp_path / "prep")
    mapped, resident = _mapping_kib(path)
    assert mapped >= size_kib  # the split is mapped from this file
    # only the stream's message headers were read (the kernel maps up to 64 KiB around each page
    # read: ~130 KiB of this 0.5 MB file), not the rows (reading them back maps all of it)
    assert resident < size_kib / 2, (resident, size_kib)
    loaded = load_prepared(out)
    for name in ("train", "validation"):
        a, b = getattr(prepared, name), getattr(loaded, name)
        assert a.column_names == b.column_names and len(a) == len(b)
        for col in ("input_ids", "labels", "source_index"):
            assert list(a[col]) == list(b[col]), (name, col)
    assert sorted([*loaded.train["source_index"], *loaded.validation["source_index"]]) == list(range(24))
