#!/usr/bin/env bash
# Build the sdist and wheel, check their metadata, install the wheel (not editable) into a fresh
# venv and run the CLI from there, so package data that an editable install hides (recipes,
# embedded samples) cannot go missing unnoticed.
#   bash scripts/check_wheel.sh      # after scripts/setup.sh (.venv holds build, twine and the deps)
# The venv reuses .venv's installed dependencies through a .pth line (a path in a .pth file adds
# that directory only; .venv's own .pth files, among them the editable kitrec_fast, are not read),
# and everything runs from outside the checkout, so only the wheel's copy of kitrec_fast is importable.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VPY=${KITREC_VENV:-$REPO/.venv}/bin/python  # the installed dependencies (and build, twine: the dev extra)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kitrec-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)

"$VPY" -m build --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
"$VPY" -m twine check --strict "$WORK"/dist/*
WHEEL=$(ls "$WORK"/dist/*.whl)

"$VPY" -m venv --without-pip "$WORK/venv"
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$VPY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' >"$SITE/_reuse_kitrec_deps.pth"
# --no-deps: the dependencies come from .venv (above); the wheel's own files are what is checked
"$VPY" -m pip --python "$WORK/venv/bin/python" install -q --no-deps --no-compile "$WHEEL"

cd "$WORK"
export PYTHONPATH=  # nothing from the checkout
where=$("$WORK/venv/bin/python" -c 'import kitrec_fast, sys; print(kitrec_fast.__file__)')
case "$where" in
  "$WORK"/venv/*) ;;
  *) echo "check_wheel: kitrec_fast imported from $where, not from the installed wheel" >&2; exit 1 ;;
esac
version=$("$WORK/venv/bin/kitrec-fast" --version)
[ "$version" = "kitrec-fast $("$WORK/venv/bin/python" -c 'from importlib.metadata import version; print(version("kitrec-fast"))')" ] \
  || { echo "check_wheel: --version says '$version', the metadata disagrees" >&2; exit 1; }
"$WORK/venv/bin/kitrec-fast" recipes
# the smoke run: tiny model, embedded sample, chat template, run directory, all from the wheel
"$WORK/venv/bin/kitrec-fast" quickstart --smoke --backend peft --output-dir "$WORK/smoke" \
  data.limit=16 data.max_length=2048 data.max_candidates=10 data.min_candidates=3 train.max_steps=2 \
  train.save_steps=2 train.eval_steps=2 >"$WORK/smoke.log" 2>&1 || { tail -40 "$WORK/smoke.log"; exit 1; }
test -f "$WORK/smoke/adapter/adapter_config.json" || { tail -40 "$WORK/smoke.log"; exit 1; }
echo "check_wheel: $(basename "$WHEEL") built, checked, installed and run ($version) in $(( $(date +%s) - t0 )) s"
