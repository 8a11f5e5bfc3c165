"""The GPU plan's preflight: ``kitrec-fast doctor --quick`` (versions, CUDA and its capability,
bitsandbytes' CUDA library, triton and a C compiler, unsloth importable in its own process).

    python benchmarks/gpu/preflight.py        # the doctor's table; exit 1 if a check failed

Kept under this name for ``tests/gpu/run_gpu_checks.sh``; ``benchmarks/gpu/gpu_phases.py`` calls the
doctor directly. See ``kitrec_fast/doctor.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kitrec_fast.doctor import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--quick", *sys.argv[1:]]))
