"""The training contract: what SageMaker writes under $SAGEMAKER_BASE_DIR, read into a TrainingEnv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mxnet_byoc import modeldir
from mxnet_byoc.train import environment, hyperparameters
from mxnet_byoc.train.environment import ContractError
from mxnet_byoc.train.hyperparameters import HyperparameterError
from mxnet_byoc.train.script import smenv


def make_base(tmp_path: Path, channels=("training",), hyperparameters=None, inputdataconfig=None,
              resourceconfig=None, checkpointconfig=None) -> Path:
    base = tmp_path / "ml"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    for name in channels:
        (base / "input" / "data" / name).mkdir(parents=True)
    files = {"hyperparameters.json": hyperparameters, "inputdataconfig.json": inputdataconfig,
             "resourceconfig.json": resourceconfig, "checkpointconfig.json": checkpointconfig}
    for name, content in files.items():
        if content is not None:
            (config / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return base


def test_modules_without_mxnet():
    # contract, hyperparameters, runtime and data must stay importable without MXNet: their tests are instant,
    # and the runtime's choices must reach the environment before MXNet is imported.
    code = ("import sys; import mxnet_byoc.train.environment, mxnet_byoc.train.hyperparameters, "
            "mxnet_byoc.train.runtime, mxnet_byoc.train.data, mxnet_byoc.train.job; "
            "assert 'mxnet' not in sys.modules, 'mxnet imported'")
    container = Path(__file__).resolve().parents[2] / "container"
    done = subprocess.run([sys.executable, "-c", code], cwd=container, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_paths_are_rooted_at_the_base_dir(tmp_path):
    base = make_base(tmp_path)
    env = environment.load(base)
    assert env.paths.model == base / "model"
    assert env.paths.output_data == base / "output" / "data"
    assert env.paths.failure == base / "output" / "failure"
    assert env.training.path == base / "input" / "data" / "training"


def test_sagemaker_base_dir_moves_everything(tmp_path, monkeypatch):
    base = make_base(tmp_path, hyperparameters={"epochs": "3"})
    monkeypatch.setenv(modeldir.BASE_DIR, str(base))
    env = environment.load()
    assert env.paths.base == base
    assert env.hyperparameters.epochs == 3
    assert env.checkpoint_dir == base / "checkpoints"


def test_default_base_dir_is_opt_ml(monkeypatch):
    monkeypatch.delenv(modeldir.BASE_DIR, raising=False)
    assert modeldir.base_dir() == Path("/opt/ml")


def test_hyperparameters_are_parsed_and_defaults_filled(tmp_path):
    base = make_base(tmp_path, hyperparameters={"epochs": "3", "optimizer": '"sgd"', "batch-size": "64",
                                                "sagemaker_program": '"x.py"'})
    hps = environment.load(base).hyperparameters
    assert (hps.epochs, hps.optimizer, hps.batch_size, hps.model) == (3, "sgd", 64, "cnn")
    assert "sagemaker_program" not in hps.as_dict()


def test_missing_hyperparameters_file_means_defaults(tmp_path):
    env = environment.load(make_base(tmp_path))
    assert env.hyperparameters == hyperparameters.Hyperparameters()


def test_bad_hyperparameter_fails_the_load(tmp_path):
    base = make_base(tmp_path, hyperparameters={"epochs": "lots"})
    with pytest.raises(HyperparameterError, match="'epochs'.*'lots'.*integer"):
        environment.load(base)


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read hyperparameters.json"),
    ('["epochs", "3"]', "JSON object"),
])
def test_unreadable_hyperparameters_file(tmp_path, content, message):
    base = make_base(tmp_path, hyperparameters=content)
    with pytest.raises(ContractError, match=message):
        environment.load(base)


def test_channels_from_inputdataconfig(tmp_path):
    config = {
        "training": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key",
                     "RecordWrapperType": "None", "ContentType": "application/x-idx"},
        "test": {"TrainingInputMode": "FastFile", "S3DistributionType": "FullyReplicated",
                 "RecordWrapperType": "None"},
    }
    base = make_base(tmp_path, channels=("training", "test"), inputdataconfig=config)
    env = environment.load(base)
    assert sorted(env.channels) == ["test", "training"]
    train = env.training
    assert (train.input_mode, train.distribution, train.content_type) == ("File", "ShardedByS3Key",
                                                                          "application/x-idx")
    assert env.channels["test"].input_mode == "FastFile"
    assert env.channels["test"].content_type is None
    assert env.validation.name == "test"


def test_channels_from_folders_without_inputdataconfig(tmp_path):
    base = make_base(tmp_path, channels=("training", "validation", "extra"))
    (base / "input" / "data" / "notes.txt").write_text("a stray file is not a channel")
    env = environment.load(base)
    assert sorted(env.channels) == ["extra", "training", "validation"]
    assert env.training.input_mode == "File"
    assert env.validation.name == "validation"


def test_training_channel_is_required(tmp_path):
    base = make_base(tmp_path, channels=("test",))
    with pytest.raises(ContractError) as e:
        environment.load(base)
    assert "'training'" in str(e.value)
    assert str(base / "input" / "data" / "training") in str(e.value)
    assert "test" in str(e.value)  # the channels that were found


def test_training_channel_required_even_with_no_data_folder(tmp_path):
    base = make_base(tmp_path, channels=())
    with pytest.raises(ContractError, match="no 'training' channel.*none"):
        environment.load(base)


def test_declared_channel_without_its_folder(tmp_path):
    config = {"training": {"TrainingInputMode": "File"}, "test": {"TrainingInputMode": "File"}}
    base = make_base(tmp_path, channels=("training",), inputdataconfig=config)
    with pytest.raises(ContractError, match="'test'.*does not exist"):
        environment.load(base)


def test_validation_channel_is_optional(tmp_path):
    env = environment.load(make_base(tmp_path, channels=("training",)))
    assert env.validation is None


def test_test_channel_is_preferred_over_validation(tmp_path):
    env = environment.load(make_base(tmp_path, channels=("training", "validation", "test")))
    assert env.validation.name == "test"


def test_pipe_mode_is_refused_with_a_reason(tmp_path):
    base = make_base(tmp_path, inputdataconfig={"training": {"TrainingInputMode": "Pipe"}})
    with pytest.raises(ContractError, match="'training'.*Pipe.*File"):
        environment.load(base)


def test_no_resourceconfig_means_one_host_algo_1(tmp_path):
    res = environment.load(make_base(tmp_path)).resources
    assert (res.current_host, res.hosts) == ("algo-1", ["algo-1"])
    assert res.is_master and res.rank == 0 and not res.distributed


def test_resourceconfig_hosts_are_sorted_and_rank_follows(tmp_path):
    base = make_base(tmp_path, resourceconfig={
        "current_host": "algo-2", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth0",
        "current_instance_type": "ml.c5.xlarge", "current_group_name": "homogeneousCluster",
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.c5.xlarge",
                             "hosts": ["algo-1", "algo-2"]}],
    })
    res = environment.load(base).resources
    assert res.hosts == ["algo-1", "algo-2"]
    assert res.current_host == "algo-2" and res.rank == 1
    assert not res.is_master and res.distributed
    assert res.network_interface == "eth0" and res.instance_type == "ml.c5.xlarge"
    assert res.instance_groups[0]["instance_group_name"] == "homogeneousCluster"


@pytest.mark.parametrize("config, message", [
    ({"current_host": "algo-3", "hosts": ["algo-1", "algo-2"]}, "algo-3.*not among hosts"),
    ({"hosts": ["algo-1"]}, "current_host"),
])
def test_bad_resourceconfig(tmp_path, config, message):
    with pytest.raises(ContractError, match=message):
        environment.load(make_base(tmp_path, resourceconfig=config))


BROKEN_CONFIG = {
    "hyperparameters.json": ("{not json", r"^cannot read hyperparameters\.json in .*/input/config: not valid JSON"),
    "resourceconfig.json": ('{"hosts": ["algo-1"]}', r"^resourceconfig\.json lacks `current_host`"),
    "inputdataconfig.json": ('["training"]', r"^inputdataconfig\.json must hold a JSON object of channel name"),
}


@pytest.mark.parametrize("name", list(BROKEN_CONFIG))
def test_the_built_in_job_and_script_mode_give_one_reason_for_a_broken_config_file(tmp_path, name):
    content, reason = BROKEN_CONFIG[name]
    base = make_base(tmp_path, **{name.removesuffix(".json"): content})
    with pytest.raises(ContractError, match=reason) as built_in:
        environment.load(base)
    with pytest.raises(ContractError) as script:
        smenv.ScriptEnv.load(base)
    assert str(script.value) == str(built_in.value)


def test_a_folder_in_place_of_a_config_file_is_a_reason(tmp_path):
    base = make_base(tmp_path)
    (base / "input" / "config" / "resourceconfig.json").mkdir()
    with pytest.raises(ContractError, match=r"^cannot read resourceconfig\.json in .*: Is a directory$"):
        environment.load(base)


def test_an_unreadable_model_metadata_file_names_the_file_and_its_folder(tmp_path):
    for name in (modeldir.SYMBOL_FILE, modeldir.PARAMS_FILE):
        (tmp_path / name).write_text("")
    (tmp_path / modeldir.METADATA_FILE).write_text("{")
    with pytest.raises(modeldir.ModelDirError, match=rf"^cannot read metadata\.json in {tmp_path}: not valid JSON"):
        modeldir.load_info(tmp_path)


def test_checkpoints_default_under_base_dir(tmp_path):
    base = make_base(tmp_path)
    assert environment.load(base).checkpoint_dir == base / "checkpoints"


def test_checkpointconfig_local_path_wins(tmp_path):
    local = tmp_path / "elsewhere" / "ckpt"
    base = make_base(tmp_path, checkpointconfig={"LocalPath": str(local), "S3Uri": "s3://bucket/ckpt"})
    assert environment.load(base).checkpoint_dir == local


def test_checkpointconfig_without_local_path_keeps_the_default(tmp_path):
    base = make_base(tmp_path, checkpointconfig={"S3Uri": "s3://bucket/ckpt"})
    assert environment.load(base).checkpoint_dir == base / "checkpoints"


def test_job_name_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(environment.TRAINING_JOB_NAME, "mnist-2024-01-01")
    assert environment.load(make_base(tmp_path)).job_name == "mnist-2024-01-01"


def test_write_failure_first_line_is_the_reason_then_the_traceback(tmp_path):
    paths = environment.Paths(tmp_path / "ml")
    try:
        raise ValueError("deep cause")
    except ValueError as exc:
        environment.write_failure(paths, "the training channel\nis empty", exc)
    text = paths.failure.read_text()
    first, rest = text.split("\n", 1)
    assert first == "the training channel is empty"
    assert "Traceback" in rest and "ValueError: deep cause" in rest


def test_write_failure_keeps_the_first_line_within_sagemakers_limit(tmp_path):
    paths = environment.Paths(tmp_path / "ml")
    environment.write_failure(paths, "x" * 5000)
    text = paths.failure.read_text()
    assert text == "x" * (environment.FAILURE_LIMIT - 1) + "\n"
    assert len(text) <= environment.FAILURE_LIMIT
