#!/bin/sh
# Creates .venv with the Python packages the tests use as independent references.
set -e
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import numpy, gguf, tokenizers' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check numpy gguf tokenizers
fi
