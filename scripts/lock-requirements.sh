#!/usr/bin/env bash
# Regenerate the images' hash-pinned lock files from their hand-written pins:
#
#   docker/requirements.txt                              -> docker/requirements-cpu.lock
#   docker/requirements.txt (less mxnet)
#     + docker/requirements-gpu.txt                      -> docker/requirements-gpu.lock
#
# Run it (`make locks`) after changing either input; tests/unit/test_requirements_locks.py fails while a
# lock is stale. Uses pip-tools from the project's virtualenv and PyPI alone: this machine's local
# wheel folders and extra indexes are switched off, so every hash is that of the file PyPI serves,
# which is what `pip install --require-hashes` downloads inside `docker build`.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PIP_COMPILE=${PIP_COMPILE:-.venv/bin/pip-compile}
work=build/locks
mkdir -p "$work"

grep -v -E '^[[:space:]]*mxnet[[:space:]]*==' docker/requirements.txt >"$work/requirements-gpu.in"
cat docker/requirements-gpu.txt >>"$work/requirements-gpu.in"

compile() {
    local out=$1 in=$2
    # PIP_CONFIG_FILE=/dev/null drops this machine's find-links/extra-index; the CA stays via PIP_CERT.
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT \
        PIP_CONFIG_FILE=/dev/null PIP_CERT="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" \
        CUSTOM_COMPILE_COMMAND="make locks" \
        "$PIP_COMPILE" --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
        --no-emit-find-links --no-emit-trusted-host --index-url https://pypi.org/simple \
        --rebuild --output-file "$out" "$in"
}

compile docker/requirements-cpu.lock docker/requirements.txt
compile docker/requirements-gpu.lock "$work/requirements-gpu.in"
echo "wrote docker/requirements-cpu.lock and docker/requirements-gpu.lock"
