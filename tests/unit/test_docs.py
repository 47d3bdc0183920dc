"""README.md documents what the code does: the generated tables must match their sources."""

import re

from mxnet_byoc.train import hyperparameters, metrics


def test_readme_hyperparameter_table_is_generated_from_specs(repo_root):
    readme = (repo_root / "README.md").read_text()
    block = re.search(r"<!-- hyperparameters:begin -->\n(.*?)\n<!-- hyperparameters:end -->", readme, re.S)
    assert block, "README.md lacks the generated hyperparameter table"
    assert block.group(1).strip() == hyperparameters.markdown_table().strip()


def test_readme_metric_definitions_match_metrics_module(repo_root):
    readme = (repo_root / "README.md").read_text()
    for definition in metrics.metric_definitions():
        assert f'{{"Name": "{definition["Name"]}", "Regex": r"{definition["Regex"]}"}}' in readme
