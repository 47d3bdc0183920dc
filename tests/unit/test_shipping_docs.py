"""README.md shows the metric definitions the Estimator gets: they must be mxnet_byoc.train.metrics' own."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mxnet_byoc.train import metrics

ROOT = Path(__file__).resolve().parents[2]
PAIR = re.compile(r'\{"Name": "([a-z_]+)", "Regex": r"([^"]+)"\}')


def test_readme_metric_definitions_are_the_ones_in_metrics_py():
    readme = (ROOT / "README.md").read_text()
    shipping = readme[readme.index("<!-- section: shipping"):readme.index("<!-- /section: shipping -->")]
    expected = [(d["Name"], d["Regex"]) for d in metrics.metric_definitions()]
    # The shipping section shows all of them, in order; no block anywhere in the README is stale (but the
    # script-mode section's, which are for the user's own scripts: tests/container/test_script_mode.py).
    assert PAIR.findall(shipping) == expected
    script_mode = re.compile(r"<!-- section: script-mode.*?<!-- /section: script-mode -->", re.S)
    assert set(PAIR.findall(script_mode.sub("", readme))) == set(expected)


def test_iam_policy_is_valid_json_with_placeholders_explained():
    policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    text = (ROOT / "docs" / "iam.md").read_text()
    for placeholder in ("ACCOUNT_ID", "EXECUTION_ROLE_NAME"):
        assert placeholder in json.dumps(policy) and placeholder in text
    assert {s["Sid"] for s in policy["Statement"]} <= set(re.findall(r"`([A-Za-z]+)`", text))
