#!/usr/bin/env bash
# The prepared GPU check: on a bare GPU machine without network, install the carried wheelhouse
# (.whl/, built here by `bash ../shared/device/make-wheelhouse`), run the preflight, then tests/gpu;
# the log and JUnit report go to $OUT (or ./gpu-out). Any failed step stops the script.
#   device tool: run(command="bash tests/gpu/run_gpu_checks.sh", carry=[".whl"])
# (benchmarks/gpu/run_all.sh runs these same tests as part of its phase 1.)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
source tests/gpu/install_wheels.sh
export PYTHONPATH=$PWD:$PYTHONPATH HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 \
       UNSLOTH_COMPILE_LOCATION=/tmp/unsloth_compiled_cache KITREC_FAST_CACHE=/tmp/kitrec_cache
"$PY" benchmarks/gpu/preflight.py 2>&1 | tee "$OUT/preflight.txt"
# -o addopts: the suite's pytest-xdist options are for CI's CPUs; the GPU machine's pytest has no xdist
"$PY" -m pytest -q -s -o addopts=-ra tests/gpu --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/gpu_tests.log"
