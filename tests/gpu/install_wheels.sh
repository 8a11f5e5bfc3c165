# Sourced by the GPU scripts: install the carried wheelhouse (.whl/) into /tmp/site, or stop with a
# message that says what to do. Sets PY and PYTHONPATH.
PY="${PYTHON:-python3}"
if ! compgen -G ".whl/*.whl" > /dev/null; then
  echo "no .whl/ wheelhouse here: build it on the dev machine (bash ../shared/device/make-wheelhouse) and carry .whl" >&2
  exit 3
fi
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
  echo "installing the wheelhouse failed (see pip's message above); rebuild .whl/ with make-wheelhouse for this Python" >&2
  exit 3
fi
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
