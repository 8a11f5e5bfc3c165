#!/usr/bin/env bash
# The prepared GPU check: on a bare GPU machine without network, install the carried wheelhouse
# (.whl/, built here by `bash ../shared/device/make-wheelhouse`), then run tests/gpu and write the
# log and JUnit report to $OUT (or ./gpu-out).
#   device tool: run(command="bash tests/gpu/run_gpu_checks.sh", carry=[".whl"])
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 \
       UNSLOTH_COMPILE_LOCATION=/tmp/unsloth_compiled_cache KITREC_FAST_CACHE=/tmp/kitrec_cache
nvidia-smi | tee "$OUT/nvidia-smi.txt"
python3 -m pytest -q -s tests/gpu --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/gpu_tests.log"
exit "${PIPESTATUS[0]}"
