"""What a failed job writes as its reason (job._reason): the first line of output/failure."""

from __future__ import annotations

import errno

import pytest

from mxnet_byoc import modeldir
from mxnet_byoc.errors import ReasonError
from mxnet_byoc.train import checkpoints, data, environment, hyperparameters, job

MESSAGE = "channel 'training': digits.idx: truncated IDX header"


@pytest.mark.parametrize("cls", [environment.ContractError, environment.TrainingError,
                                 hyperparameters.HyperparameterError, data.DataError,
                                 checkpoints.CheckpointError, modeldir.ModelDirError])
def test_errors_whose_message_is_the_reason_share_one_base_and_are_written_as_they_are(cls):
    assert issubclass(cls, ReasonError)
    assert job._reason(cls(MESSAGE)) == MESSAGE


@pytest.mark.parametrize("exc, reason", [
    (environment.Stopped("stopped by SIGTERM at epoch 1 step 3/46"),
     "Training job stopped: stopped by SIGTERM at epoch 1 step 3/46"),
    (MemoryError(), "out of memory: use a larger instance or a smaller batch_size"),
    (OSError("libcuda.so.1: cannot open shared object file"), "the GPU image needs the NVIDIA driver"),
    (OSError(errno.ENOSPC, "No space left on device", "/opt/ml/model/x"), "No space left on device: /opt/ml/model/x"),
    (KeyError("weights"), "unexpected error KeyError: 'weights'"),
    (ValueError("first line\nsecond line"), "unexpected error ValueError: first line"),
    (RuntimeError(), "unexpected error RuntimeError: "),
])
def test_other_exceptions_get_a_reason_that_names_them(exc, reason):
    assert job._reason(exc).startswith(reason)
    assert "\n" not in job._reason(exc)
