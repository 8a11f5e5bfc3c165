#!/usr/bin/env bash
# run_all.sh - the prepared GPU benchmark run, in phases that fit a lease.
#
#   bash benchmarks/gpu/run_all.sh [--phase 1|2] [OUT_DIR]   # OUT_DIR defaults to $OUT (the device tool's folder)
#   bash benchmarks/gpu/run_all.sh --cpu-dry-run OUT_DIR     # the same plan on CPU, tiny model, same output files
#   bash benchmarks/gpu/run_all.sh --only headline [STEP ...] -- OUT_DIR
#                                   # a subset; the steps it needs (build-model) are added and named
#
# OUT_DIR receives exactly two files: kitrec-bench.tar.gz (everything, re-packed after every step,
# so a run killed at its limit still returns what finished) and summary.md (the plan, its GPU
# estimates against what each step took, each step's status, the parity verdict and the headline
# table). The work itself happens in a scratch folder (see benchmarks/gpu/gpu_phases.py).
#
# Phase 1 (default, budget 530 s): `kitrec-fast doctor --quick`, `kitrec-fast doctor --only
# fused_kernels` (the summary leads with its verdict), the model build on the largest writable scratch
# disk (KITREC_SCRATCH, the temp folder, /var/tmp, ...; df -h first), the headline pair alone on the GPU
# (40 layers, 2 x 5,120 tokens, smoothing on, 3-10 timed steps filling each worker's share), then the
# parity check (2 layers linked to the build) and tests/gpu if time is left. Phase 2 (a later lease): token scaling and memory ceilings.
#
# On a bare GPU machine without network: carry `.whl/` (`bash ../shared/device/make-wheelhouse` on
# the dev machine); it is installed into /tmp/site first. Environment (optional):
#   KITREC_GIT_COMMIT  commit to record (the tree arrives without .git)
#   BENCH_BUDGET_S     override the phase's time budget, seconds
#   KITREC_SCRATCH     a folder to prefer for the 29.5 GB model (the largest writable candidate wins)
set -euo pipefail

PHASE=1
DRY=()
ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --phase) PHASE="$2"; shift 2 ;;
    --cpu-dry-run) DRY=(--cpu-dry-run); shift ;;
    --only)
      shift
      ONLY=(--only)
      # step names up to "--" or the last argument (the output folder)
      while [ $# -gt 0 ] && [ "$1" != "--" ] && { [ ${#ONLY[@]} -eq 1 ] || [ $# -gt 1 ]; } && [ "${1#-}" = "$1" ]; do
        ONLY+=("$1"); shift
      done
      [ "${1:-}" = "--" ] && shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
OUT_DIR="${1:-${OUT:?give an output directory or set OUT}}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"

if [ ${#DRY[@]} -eq 0 ]; then
  # the wheelhouse always goes in (2 s), so the versions are exactly the pinned ones (its peft must
  # shadow a preinstalled one); nothing is fetched from a network
  source "$REPO/tests/gpu/install_wheels.sh"
  export UNSLOTH_COMPILE_LOCATION=/tmp/unsloth_compiled_cache KITREC_FAST_CACHE=/tmp/kitrec_cache
else
  # the project's environment (scripts/setup.sh) when there is one
  if [ -x "$REPO/.venv/bin/python" ]; then PY="${PYTHON:-$REPO/.venv/bin/python}"; else PY="${PYTHON:-python3}"; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false

BUDGET=()
[ -n "${BENCH_BUDGET_S:-}" ] && BUDGET=(--budget-s "$BENCH_BUDGET_S")
exec "$PY" benchmarks/gpu/gpu_phases.py --phase "$PHASE" --out "$OUT_DIR" "${DRY[@]}" "${BUDGET[@]}" "${ONLY[@]}"
