#!/usr/bin/env bash
# Rewrites README.md's generated hyperparameter table from container/mxnet_byoc/train/hyperparameters.py.
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(.venv/bin/python -m mxnet_byoc.train.hyperparameters)
TABLE="$table" .venv/bin/python - <<'PY'
import os, re
readme = open("README.md").read()
new = re.sub(r"(<!-- hyperparameters:begin -->\n).*?(\n<!-- hyperparameters:end -->)",
             lambda m: m.group(1) + os.environ["TABLE"] + m.group(2), readme, flags=re.S)
open("README.md", "w").write(new)
PY
