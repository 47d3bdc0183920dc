#!/usr/bin/env bash
# Rewrites the generated parts of README.md and docs/ from their sources (scripts/generated_docs.py says which);
# --check only says which are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/generated_docs.py "$@"
