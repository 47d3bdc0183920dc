"""byoctl --local under SDK 3.x: train (ModelTrainer's local container mode), deploy, invoke, delete and
transform (SDK 3's local session), the same commands and output as under SDK 2 (tests/container/
test_local_mode.py runs the same round trip there)."""

from __future__ import annotations

import pytest

from tests.container.dockerkit import read_idx_gz
from tests.container.test_local_mode import byoctl_local_round_trip

pytestmark = [pytest.mark.container, pytest.mark.slow]


def test_byoctl_local_round_trip_under_sdk3(offline, cpu_image, mnist_dir, tmp_path):
    from byoctl.sessions import local_leftovers_removed

    images = read_idx_gz(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_gz(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    with local_leftovers_removed():
        # The model trained here is the one deployed: the CNN, for the invocation's accuracy threshold.
        byoctl_local_round_trip(cpu_image, (images, labels), mnist_dir, tmp_path, train_records=12000,
                                hyperparameters=("epochs=1", "model=cnn"), min_accuracy=(0.93, 0.93))
