"""``python -m kitrec_fast.data.synth``: write synthetic rows, or regenerate the shipped samples."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from kitrec_fast.data import synth
from kitrec_fast.data.synth.files import regenerate_samples, write_jsonl
from kitrec_fast.data.synth.rows import generate_rows
from kitrec_fast.data.synth.spec import CANDIDATE_SETS, DOMAINS, KINDS, LAYOUTS, SPLITS

def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kitrec_fast.data.synth", description=synth.__doc__.split("\n")[0])
    p.add_argument("--regenerate-samples", action="store_true", help="rewrite kitrec_fast/data/sample/*.jsonl.gz")
    p.add_argument("--out", help="output .jsonl or .jsonl.gz (or the sample directory with --regenerate-samples)")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", choices=DOMAINS, default="music")
    p.add_argument("--kind", choices=KINDS, default="dualft")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--candidate-set", choices=CANDIDATE_SETS, default="A")
    p.add_argument("--layout", choices=LAYOUTS, default="plain", help="val/test row layout (see the module docstring)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.regenerate_samples:
        for path in regenerate_samples(a.out):
            print(f"{path} ({path.stat().st_size:,} bytes)")
    else:
        if not a.out:
            p.error("--out is required unless --regenerate-samples")
        rows = generate_rows(a.n, a.seed, a.domain, a.kind, a.split, a.candidate_set, a.layout)
        print(f"{write_jsonl(a.out, rows)}: {len(rows)} rows")
    print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
