"""Script mode's inputs to the user's script, formatted as AWS's training toolkit formats them (5.1), and
the failure reason read from the script's stderr."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from devkit.waiting import wait_until
from mxnet_byoc.train.configfiles import ContractError
from mxnet_byoc.train.script import process, runner, smenv


def job(base: Path, hyperparameters: dict, resources: dict | None = None, data_config: dict | None = None) -> Path:
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    if resources is not None:
        (config / "resourceconfig.json").write_text(json.dumps(resources))
    if data_config is not None:
        (config / "inputdataconfig.json").write_text(json.dumps(data_config))
    return base


# What the SDK sends: framework estimators JSON-encode every value, the generic Estimator sends str(value).
SDK_HYPERPARAMETERS = {
    "sagemaker_program": '"train.py"', "sagemaker_submit_directory": '"/opt/ml/code"',
    "sagemaker_container_log_level": "20", "sagemaker_job_name": '"job-1"', "sagemaker_region": '"eu-west-1"',
    "sagemaker_parameter_server_enabled": "true",
    "batch-size": "100", "epochs": "2", "use-gpu": "True", "augment": "true", "lr": "1e-3",
    "optimizer": '"adam"', "note": "two words", "layers": "[64, 32]", "opts": '{"b": "x y", "a": 1}',
    "nothing": "null", "v": "3",
}


def test_hyperparameters_are_json_decoded_when_they_parse():
    decoded = smenv.decode_hyperparameters(SDK_HYPERPARAMETERS)
    assert decoded["batch-size"] == 100 and decoded["lr"] == 0.001 and decoded["augment"] is True
    assert decoded["use-gpu"] == "True"  # not JSON: kept as sent
    assert decoded["note"] == "two words" and decoded["optimizer"] == "adam"
    assert decoded["opts"] == {"b": "x y", "a": 1} and decoded["nothing"] is None


def test_arguments_are_sorted_flag_value_pairs_as_the_toolkit_writes_them(tmp_path):
    env = smenv.ScriptEnv.load(job(tmp_path, SDK_HYPERPARAMETERS))
    assert env.cmd_args() == [
        "--augment", "True", "--batch-size", "100", "--epochs", "2", "--layers", "[64, 32]",
        "--lr", "0.001", "--note", "two words", "--nothing", "", "--optimizer", "adam",
        "--opts", "a=1,b=x y", "--use-gpu", "True", "-v", "3",
    ]


def test_sm_variables_carry_the_toolkits_names_and_encodings(tmp_path):
    base = job(tmp_path, SDK_HYPERPARAMETERS,
               {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth1"},
               {"training": {"TrainingInputMode": "File"}, "test": {"TrainingInputMode": "File"}})
    env = smenv.ScriptEnv.load(base).env_vars()
    assert env["SM_MODEL_DIR"] == f"{base}/model"
    assert env["SM_CHANNELS"] == '["test","training"]'
    assert env["SM_CHANNEL_TRAINING"] == f"{base}/input/data/training"
    assert env["SM_CHANNEL_TEST"] == f"{base}/input/data/test"
    assert env["SM_HOSTS"] == '["algo-1","algo-2"]' and env["SM_CURRENT_HOST"] == "algo-2"
    assert env["SM_NETWORK_INTERFACE_NAME"] == "eth1"
    assert env["SM_HP_BATCH-SIZE"] == "100"  # the name upper-cased, hyphen kept
    assert env["SM_HP_OPTIMIZER"] == "adam" and env["SM_HP_NOTE"] == "two words"
    assert env["SM_HP_OPTS"] == '{"a":1,"b":"x y"}' and env["SM_HP_AUGMENT"] == "true"
    assert env["SM_HP_NOTHING"] == ""
    assert json.loads(env["SM_HPS"]) == smenv.decode_hyperparameters(
        {k: v for k, v in SDK_HYPERPARAMETERS.items() if not k.startswith("sagemaker_")})
    assert not any(k.startswith("SM_HP_SAGEMAKER") for k in env)
    assert env["SM_FRAMEWORK_PARAMS"] == '{"sagemaker_parameter_server_enabled":true}'
    assert json.loads(env["SM_USER_ARGS"])[:4] == ["--augment", "True", "--batch-size", "100"]
    assert env["SM_USER_ENTRY_POINT"] == "train.py" and env["SM_MODULE_NAME"] == "train"
    assert env["SM_MODULE_DIR"] == "/opt/ml/code" and env["SM_LOG_LEVEL"] == "20"
    assert env["SM_OUTPUT_DATA_DIR"] == f"{base}/output/data" and env["SM_OUTPUT_DIR"] == f"{base}/output"
    assert env["SM_INPUT_DIR"] == f"{base}/input" and env["SM_INPUT_CONFIG_DIR"] == f"{base}/input/config"
    assert json.loads(env["SM_RESOURCE_CONFIG"])["current_host"] == "algo-2"
    assert json.loads(env["SM_INPUT_DATA_CONFIG"]) == {"training": {"TrainingInputMode": "File"},
                                                       "test": {"TrainingInputMode": "File"}}
    assert env["SM_NUM_CPUS"].isdigit() and env["SM_NUM_GPUS"].isdigit()
    assert env["SM_DISTRIBUTION_INSTANCE_GROUPS"] == '["homogeneousCluster"]'  # the parameter server is on
    training_env = json.loads(env["SM_TRAINING_ENV"])
    assert training_env["master_hostname"] == "algo-1" and training_env["is_master"] is False
    assert training_env["hyperparameters"]["batch-size"] == 100
    assert training_env["channel_input_dirs"]["training"] == f"{base}/input/data/training"
    # Compact JSON with sorted keys, as the toolkit writes every non-string value.
    assert env["SM_TRAINING_ENV"] == json.dumps(training_env, sort_keys=True, separators=(",", ":"))


def test_without_config_files_one_host_and_the_data_folders(tmp_path):
    base = job(tmp_path, {"sagemaker_program": "train.py"})
    (base / "input" / "data" / "training").mkdir(parents=True)
    env = smenv.ScriptEnv.load(base)
    variables = env.env_vars()
    assert variables["SM_HOSTS"] == '["algo-1"]' and variables["SM_CHANNELS"] == '["training"]'
    assert variables["SM_MODULE_DIR"] == f"{base}/code"  # no submit directory: <base>/code, as the toolkit
    assert env.cmd_args() == [] and not env.parameter_server


def test_instance_groups_decide_the_master_and_the_distribution_hosts(tmp_path):
    groups = [{"instance_group_name": "cpu", "instance_type": "ml.c5.xlarge", "hosts": ["algo-2"]},
              {"instance_group_name": "gpu", "instance_type": "ml.p3.2xlarge", "hosts": ["algo-1"]}]
    base = job(tmp_path, {"sagemaker_program": "train.py", "sagemaker_distribution_instance_groups": '["cpu"]'},
               {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "current_group_name": "gpu",
                "instance_groups": groups})
    env = smenv.ScriptEnv.load(base).training_env()
    assert env["distribution_hosts"] == ["algo-2"] and env["master_hostname"] == "algo-2"
    assert env["is_hetero"] is True and env["current_instance_group_hosts"] == ["algo-1"]
    assert env["instance_groups"] == ["cpu", "gpu"] and env["current_instance_type"] == "local"


@pytest.mark.parametrize("value, on", [("true", True), ('"True"', True), ("True", True), ("1", True),
                                       ("false", False), ("False", False), ('"false"', False)])
def test_the_parameter_server_switch_reads_both_sdk_encodings(tmp_path, value, on):
    env = smenv.ScriptEnv.load(job(tmp_path, {"sagemaker_program": "t.py",
                                              "sagemaker_parameter_server_enabled": value}))
    assert env.parameter_server is on


def test_a_broken_config_file_is_a_reason(tmp_path):
    base = job(tmp_path, {"sagemaker_program": "t.py"}, {"current_host": "algo-3", "hosts": ["algo-1"]})
    with pytest.raises(ContractError, match="current_host"):
        smenv.ScriptEnv.load(base)
    (base / "input" / "config" / "resourceconfig.json").write_text("{")
    with pytest.raises(ContractError, match="cannot read resourceconfig.json"):
        smenv.ScriptEnv.load(base)


def test_script_mode_is_requested_by_the_hyperparameter_or_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_PROGRAM", raising=False)
    assert runner.requested(job(tmp_path / "a", {"sagemaker_program": '"train.py"'}))
    assert not runner.requested(job(tmp_path / "b", {"epochs": "1", "sagemaker_job_name": '"x"'}))
    assert not runner.requested(tmp_path / "nothing")
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "train.py")
    assert runner.requested(tmp_path / "nothing")


# -- the command -------------------------------------------------------------------------------------------

def _env_for(tmp_path: Path, program: str, files: dict[str, str]) -> tuple[smenv.ScriptEnv, Path]:
    code = tmp_path / "code"
    for name, text in files.items():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_text(text)
    return smenv.ScriptEnv.load(job(tmp_path / "ml", {"sagemaker_program": program, "epochs": "2"})), code


def test_a_python_script_runs_with_the_images_python(tmp_path):
    env, code = _env_for(tmp_path, "src/train.py", {"src/train.py": ""})
    assert runner.command(env, code)[1:] == ["--", "src/train.py", "--epochs", "2"]


def test_a_package_runs_as_a_module_and_a_shell_script_through_sh(tmp_path):
    env, code = _env_for(tmp_path / "pkg", "train.py", {"train.py": "", "setup.py": ""})
    assert runner.command(env, code)[1:] == ["-m", "train", "--epochs", "2"]
    env, code = _env_for(tmp_path / "sh", "run me.sh".replace(" ", "_"), {"run_me.sh": "echo hi\n"})
    assert runner.command(env, code) == ["/bin/sh", "-c", "./run_me.sh --epochs 2"]
    assert (code / "run_me.sh").stat().st_mode & 0o111


@pytest.mark.parametrize("name, reason", [
    ("", "is empty"), ("../train.py", "plain relative path"), ("/etc/train.py", "plain relative path"),
    ("-c", "plain relative path"), ("a b.py", "plain relative path"), ("missing.py", "is not in the code folder"),
])
def test_an_unusable_entry_point_is_refused_with_the_reason(tmp_path, name, reason):
    (tmp_path / "train.py").write_text("")
    with pytest.raises(runner.ScriptError, match=reason):
        runner.check_entry_point(name, tmp_path)


# -- the failure reason from stderr -----------------------------------------------------------------------

TRACEBACK = """Traceback (most recent call last):
  File "/opt/ml/code/train.py", line 9, in <module>
    main()
  File "/opt/ml/code/train.py", line 7, in main
    raise ValueError("no images in /opt/ml/input/data/training")
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ValueError: no images in /opt/ml/input/data/training
"""


def test_the_last_error_line_and_its_traceback():
    error, traceback = process.last_error("loading data\n" + TRACEBACK)
    assert error == "ValueError: no images in /opt/ml/input/data/training"
    assert traceback.startswith("Traceback (most recent call last):\n  File") and traceback.endswith(error)


def test_a_chained_exception_reports_the_last_one():
    chained = TRACEBACK + "\nDuring handling of the above exception, another exception occurred:\n\n" + \
        TRACEBACK.replace("ValueError: no images", "KeyError: 'no labels'")
    assert process.last_error(chained)[0] == "KeyError: 'no labels' in /opt/ml/input/data/training"


def test_an_mxnet_error_reports_its_reason_not_its_cpp_stack():
    mxnet_error = TRACEBACK.replace("ValueError: no images in /opt/ml/input/data/training\n", (
        "mxnet.base.MXNetError: Traceback (most recent call last):\n"
        '  File "../src/io/local_filesys.cc", line 209\n'
        'LocalFileSystem: Check failed: allow_null: :Open "/opt/ml/model/x.json": No such file or directory\n'))
    error, traceback = process.last_error(mxnet_error)
    assert error == ('mxnet.base.MXNetError: LocalFileSystem: Check failed: allow_null: :Open '
                     '"/opt/ml/model/x.json": No such file or directory')
    assert "local_filesys.cc" in traceback


RICH_TRACEBACK = """epoch 1 done
╭───────────────────── Traceback (most recent call last) ──────────────────────╮
│ /opt/ml/code/train.py:5 in <module>                                          │
│                                                                              │
│ ❱ 5 raise ValueError("labels and images differ in count")                    │
╰──────────────────────────────────────────────────────────────────────────────╯
ValueError: labels and images differ in count
"""


def test_a_traceback_printed_by_rich_gives_its_error_line_and_box():
    error, traceback = process.last_rich_error(RICH_TRACEBACK)
    assert error == "ValueError: labels and images differ in count"
    assert traceback.startswith("╭") and "train.py:5" in traceback and traceback.endswith(error)
    assert process.last_rich_error("epoch 1 done\nepoch 2 done\n") == ("", "")
    assert process.last_error(RICH_TRACEBACK)[1] == ""  # not a plain traceback: stderr's reader leaves it


def test_the_output_is_passed_on_in_whole_lines():
    # A line the script writes in two pieces must not take a line of the other stream into its middle.
    source_read, source_write = os.pipe()
    target_read, target_write = os.pipe()
    tail = process._Tail()
    pump = threading.Thread(target=process._copy, args=(source_read, target_write, tail))
    pump.start()
    try:
        os.write(source_write, b"epoch=1; loss=")
        wait_until(lambda: tail.size > 0, timeout=10, what="the pump to read the first piece")
        os.write(target_write, b"a line of the other stream\n")
        os.write(source_write, b"0.5;\n10%\r")
    finally:
        os.close(source_write)
        pump.join(timeout=10)
        os.close(target_write)
    with os.fdopen(target_read, "rb") as received:
        assert received.read() == b"a line of the other stream\nepoch=1; loss=0.5;\n10%\r"
    assert tail.text() == "epoch=1; loss=0.5;\n10%\r"
    os.close(source_read)


def test_without_a_traceback_the_last_line_counts():
    assert process.last_error("usage: train.py [-h]\ntrain.py: error: unrecognized arguments: --x 1\n\n") == \
        ("train.py: error: unrecognized arguments: --x 1", "")
    syntax_error = '  File "train.py", line 3\n    x = (\n        ^\nSyntaxError: \'(\' was never closed\n'
    assert process.last_error(syntax_error)[0] == "SyntaxError: '(' was never closed"
    assert process.last_error("epoch 1 10%\repoch 1 100%\r")[0] == "epoch 1 100%"
    assert process.last_error("") == ("", "")


@pytest.fixture
def run_in_process():
    """runner.run, as `train` calls it, in this process: it takes SIGTERM and SIGINT over and may set
    variables, as in `train`; both are put back afterwards."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    environ = dict(os.environ)
    yield runner.run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    os.environ.clear()
    os.environ.update(environ)


def test_hosts_that_never_resolve_are_the_reason(tmp_path, monkeypatch, run_in_process):
    from mxnet_byoc.train import distributed
    from mxnet_byoc.train.environment import TrainingError

    def unresolved(hosts, timeout):
        raise TrainingError(f"hosts ['algo-2'] did not resolve within {timeout:.0f} s (peer_timeout)")

    monkeypatch.setattr(distributed, "resolve", unresolved)
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("open('ran', 'w')\n")
    base = job(tmp_path / "ml", {"sagemaker_program": "train.py", "sagemaker_submit_directory": str(code),
                                 "sagemaker_parameter_server_enabled": "true"},
               {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]})
    assert run_in_process(base) == runner.EXIT_FAILED
    assert (base / "output" / "failure").read_text().startswith("hosts ['algo-2'] did not resolve within 900 s")
    assert not (code / "ran").exists()


@pytest.mark.parametrize("switch", ["sagemaker_distributed_dataparallel_enabled"])
def test_a_distribution_the_image_lacks_fails_the_job_before_the_script_runs(tmp_path, switch, run_in_process):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("open('ran', 'w')\n")
    base = job(tmp_path / "ml", {"sagemaker_program": "train.py", "sagemaker_submit_directory": str(code),
                                 switch: "true"})
    assert run_in_process(base) == runner.EXIT_FAILED
    reason = (base / "output" / "failure").read_text()
    assert reason.startswith(f"{switch}: ") and "parameter server" in reason
    assert not (code / "ran").exists()


def test_a_distribution_switched_off_is_no_reason_to_refuse(tmp_path):
    base = job(tmp_path, {"sagemaker_program": "train.py", "sagemaker_mpi_enabled": "false",
                          "sagemaker_distributed_dataparallel_enabled": "False"})
    runner.refuse_unsupported_distribution(smenv.ScriptEnv.load(base))
