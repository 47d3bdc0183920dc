"""byoctl's command-line modules import nothing of MXNet's world (.venv-client has neither MXNet nor its numpy)."""

from __future__ import annotations

import subprocess
import sys


def test_byoctl_cli_needs_only_standard_library_modules_of_mxnet_byoc():
    script = ("import sys, byoctl.cli, byoctl.sdk; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'mxnet', 'PIL', 'sagemaker')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    # The SDK itself is imported only when a command runs; mxnet_byoc's metric and media-type modules
    # are standard library only.
    assert result.stdout.strip() == "[]", result.stdout
