"""What a user's training script receives: the `SM_*` variables and command-line arguments that AWS's
training toolkit (`sagemaker-training`, which AWS's MXNet containers run) derives from /opt/ml.

Names, values and encodings follow the toolkit's `environment.Environment.to_env_vars()` and
`mapping.to_cmd_args()` (version 5.1): a script written for AWS's containers reads the same strings here.
- Hyperparameters: each value is JSON-decoded when it parses ("10" -> 10, "\"adam\"" -> "adam",
  "true" -> True), else kept as the string it is ("True", "a b"). Names starting with `sagemaker_` (and the
  toolkit's few reserved names) are the platform's, not the script's.
- Arguments: sorted by name, `--name value` (`-n value` for a one-letter name), the value as Python's
  `str()` of the decoded value (True -> "True", 0.001 -> "0.001"), a dict as `k1=v1,k2=v2`, one
  argument per value however many spaces it holds (no shell is involved).
- Variables: `SM_` + the upper-cased name (`batch-size` -> `SM_HP_BATCH-SIZE`, as the toolkit does);
  strings as they are, everything else compact JSON with sorted keys.

Only the standard library: reading this costs the job no start-up time.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import configfiles

PROGRAM = "sagemaker_program"
SUBMIT_DIRECTORY = "sagemaker_submit_directory"
REGION = "sagemaker_region"
JOB_NAME = "sagemaker_job_name"
LOG_LEVEL = "sagemaker_container_log_level"
S3_OUTPUT = "sagemaker_s3_output"
PARAMETER_SERVER = "sagemaker_parameter_server_enabled"
DISTRIBUTION_GROUPS = "sagemaker_distribution_instance_groups"
SAGEMAKER_PREFIX = "sagemaker_"
# The toolkit's own settings: neither the script's hyperparameters nor "additional framework parameters".
TOOLKIT_PARAMETERS = (PROGRAM, SUBMIT_DIRECTORY, "sagemaker_enable_cloudwatch_metrics", REGION, LOG_LEVEL,
                      JOB_NAME, "default_user_module_name", "_tuning_objective_metric", S3_OUTPUT)
MPI = "sagemaker_mpi_enabled"
DATA_PARALLEL = "sagemaker_distributed_dataparallel_enabled"
# Any of these switched on puts the current instance group among the distribution groups.
DISTRIBUTION_SWITCHES = (MPI, PARAMETER_SERVER, DATA_PARALLEL,
                         "sagemaker_pytorch_ddp_enabled", "sagemaker_pytorch_xla_multi_worker_enabled",
                         "sagemaker_multi_worker_mirrored_strategy_enabled", "sagemaker_torch_distributed_enabled")
PROGRAM_VARIABLE = "SAGEMAKER_PROGRAM"  # the toolkit takes the entry point from here before the hyperparameter
FRAMEWORK_MODULE_VARIABLE = "SAGEMAKER_TRAINING_MODULE"
DEFAULT_GROUP = "homogeneousCluster"


def decode_hyperparameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Each value JSON-decoded when it parses, else kept as given (the toolkit's read_hyperparameters)."""
    decoded = {}
    for name, value in raw.items():
        try:
            decoded[name] = json.loads(value)
        except (ValueError, TypeError):
            decoded[name] = value
    return decoded


def is_platform_parameter(name: str) -> bool:
    return name in TOOLKIT_PARAMETERS or name.startswith(SAGEMAKER_PREFIX)


def switched_on(value: Any) -> bool:
    """A flag as the SDK sends it: JSON true, or "True"/"true"/"1" from the generic Estimator's str().
    (The toolkit takes any non-empty value, so "False" would switch it on there: not here.)"""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _text(value: Any) -> str:
    """The toolkit's mapping._decode: how one value becomes one command-line argument."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin1")
    return str(value)


def to_cmd_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """`--name value` pairs, sorted by name; a dict becomes `k1=v1,k2=v2` (the toolkit's to_cmd_args)."""
    args: list[str] = []
    for name in sorted(hyperparameters):
        flag = _text(name)
        value = hyperparameters[name]
        args.append(("--" if len(flag) > 1 else "-") + flag if flag else "")
        if hasattr(value, "items"):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append(_text(value))
    return args


def to_env_value(value: Any) -> str:
    """A string as it is, bytes as latin-1, None as empty, everything else compact sorted JSON."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def to_env_vars(mapping: Mapping[str, Any]) -> dict[str, str]:
    return {(f"SM_{str(k).upper()}" if k else ""): to_env_value(v) for k, v in mapping.items()}


def _num_gpus() -> int:
    """GPUs this container sees: `nvidia-smi --list-gpus` as the toolkit counts them, else the device files
    the NVIDIA runtime mounts (/dev/nvidia0, /dev/nvidia1, ...)."""
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30)
            if listed.returncode == 0:
                return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    return sum(1 for p in Path("/dev").glob("nvidia[0-9]*") if p.name[len("nvidia"):].isdigit())


@dataclass
class ScriptEnv:
    """The toolkit's Environment for one host, built from the files under `base` (SAGEMAKER_BASE_DIR)."""

    base: Path
    all_hyperparameters: dict[str, Any]  # decoded, platform ones included
    resource_config: dict[str, Any]
    input_data_config: dict[str, Any]
    channel_input_dirs: dict[str, str]
    num_gpus: int
    num_cpus: int

    @classmethod
    def load(cls, base: Path) -> ScriptEnv:
        config = base / "input" / "config"
        hps = decode_hyperparameters(configfiles.hyperparameters(config))
        resources = configfiles.resources(config)
        data_config = configfiles.input_data(config)
        data_dir = base / "input" / "data"
        if data_config is None:
            # No inputdataconfig.json (a laptop's `docker run`): the folders under input/data are the channels.
            data_config = {}
            names = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        else:
            names = list(data_config)
        return cls(base=base, all_hyperparameters=hps, resource_config=resources, input_data_config=data_config,
                   channel_input_dirs={name: str(data_dir / name) for name in names},
                   num_gpus=_num_gpus(), num_cpus=multiprocessing.cpu_count())

    # --- the platform's settings ------------------------------------------------------------------

    @property
    def platform_parameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.all_hyperparameters.items() if is_platform_parameter(k)}

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The script's own hyperparameters: everything that is not the platform's."""
        return {k: v for k, v in self.all_hyperparameters.items() if not is_platform_parameter(k)}

    @property
    def additional_framework_parameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.platform_parameters.items() if k not in TOOLKIT_PARAMETERS}

    @property
    def user_entry_point(self) -> str | None:
        program = os.environ.get(PROGRAM_VARIABLE) or self.all_hyperparameters.get(PROGRAM)
        return None if program is None else str(program)

    @property
    def module_name(self) -> str | None:
        program = self.user_entry_point
        return program[:-3] if program and program.endswith(".py") else program

    @property
    def module_dir(self) -> str:
        return str(self.all_hyperparameters.get(SUBMIT_DIRECTORY, self.base / "code"))

    @property
    def log_level(self) -> Any:
        return self.all_hyperparameters.get(LOG_LEVEL, logging.INFO)

    @property
    def region(self) -> str | None:
        region = self.all_hyperparameters.get(REGION)
        return str(region) if region else None

    @property
    def parameter_server(self) -> bool:
        return switched_on(self.additional_framework_parameters.get(PARAMETER_SERVER, False))

    # --- the cluster ------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        return list(self.resource_config["hosts"])

    @property
    def current_host(self) -> str:
        return str(self.resource_config["current_host"])

    @property
    def current_instance_type(self) -> str:
        return self.resource_config.get("current_instance_type", "local")

    @property
    def current_instance_group(self) -> str:
        return self.resource_config.get("current_group_name", DEFAULT_GROUP)

    @property
    def network_interface_name(self) -> str:
        return self.resource_config.get("network_interface_name", "eth0")

    @property
    def topology(self) -> list[Any]:
        return self.resource_config.get("topology", [])

    @property
    def _groups(self) -> list[dict[str, Any]]:
        return list(self.resource_config.get("instance_groups", []) or [])

    @property
    def instance_groups(self) -> list[str]:
        return [g["instance_group_name"] for g in self._groups]

    @property
    def instance_groups_dict(self) -> dict[str, Any]:
        return {g["instance_group_name"]: g for g in self._groups}

    @property
    def current_instance_group_hosts(self) -> list[str]:
        for group in self._groups:
            if group["instance_group_name"] == self.current_instance_group:
                return group["hosts"]
        return []

    @property
    def distribution_instance_groups(self) -> list[str]:
        framework = self.additional_framework_parameters
        if DISTRIBUTION_GROUPS in framework:
            return framework[DISTRIBUTION_GROUPS]
        on = any(switched_on(framework.get(name, False)) for name in DISTRIBUTION_SWITCHES)
        return [self.current_instance_group] if on else []

    @property
    def distribution_hosts(self) -> list[str]:
        if not self._groups:
            return self.hosts
        return [h for g in self._groups if g["instance_group_name"] in self.distribution_instance_groups
                for h in g["hosts"]]

    @property
    def master_hostname(self) -> str:
        return (self.distribution_hosts or self.hosts)[0]

    # --- folders ----------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(str(self.base), *parts)

    def training_env(self) -> dict[str, Any]:
        """SM_TRAINING_ENV: every property of the toolkit's Environment."""
        mp = os.environ.get("SM_HP_MP_PARAMETERS")
        return {
            "additional_framework_parameters": self.additional_framework_parameters,
            "channel_input_dirs": self.channel_input_dirs,
            "current_host": self.current_host,
            "current_instance_group": self.current_instance_group,
            "current_instance_group_hosts": self.current_instance_group_hosts,
            "current_instance_type": self.current_instance_type,
            "distribution_hosts": self.distribution_hosts,
            "distribution_instance_groups": self.distribution_instance_groups,
            "framework_module": os.environ.get(FRAMEWORK_MODULE_VARIABLE),
            "hosts": self.hosts,
            "hyperparameters": self.hyperparameters,
            "input_config_dir": self._path("input", "config"),
            "input_data_config": self.input_data_config,
            "input_dir": self._path("input"),
            "instance_groups": self.instance_groups,
            "instance_groups_dict": self.instance_groups_dict,
            "is_hetero": len(self.instance_groups) > 1,
            "is_master": self.current_host == self.master_hostname,
            "is_modelparallel_enabled": mp and mp != "{}",
            "is_smddpmprun_installed": shutil.which("smddpmprun") is not None,
            "is_smddprun_installed": shutil.which("smddprun") is not None,
            "job_name": os.environ.get("TRAINING_JOB_NAME"),
            "log_level": self.log_level,
            "master_hostname": self.master_hostname,
            "model_dir": self._path("model"),
            "module_dir": self.module_dir,
            "module_name": self.module_name,
            "network_interface_name": self.network_interface_name,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "num_neurons": 0,  # no Neuron devices in an MXNet image
            "output_data_dir": self._path("output", "data"),
            "output_dir": self._path("output"),
            "output_intermediate_dir": self._path("output", "intermediate"),
            "resource_config": self.resource_config,
            "topology": self.topology,
            "user_entry_point": self.user_entry_point,
        }

    def cmd_args(self) -> list[str]:
        return to_cmd_args(self.hyperparameters)

    def env_vars(self) -> dict[str, str]:
        """Every SM_* variable the toolkit sets for the script (to_env_vars)."""
        env = self.training_env()
        mapping: dict[str, Any] = {
            "hosts": env["hosts"],
            "network_interface_name": env["network_interface_name"],
            "hps": env["hyperparameters"],
            "user_entry_point": env["user_entry_point"],
            "framework_params": env["additional_framework_parameters"],
            "resource_config": env["resource_config"],
            "input_data_config": env["input_data_config"],
            "output_data_dir": env["output_data_dir"],
            "channels": sorted(self.channel_input_dirs),
            "current_host": env["current_host"],
            "current_instance_type": env["current_instance_type"],
            "current_instance_group": env["current_instance_group"],
            "current_instance_group_hosts": env["current_instance_group_hosts"],
            "instance_groups": env["instance_groups"],
            "instance_groups_dict": env["instance_groups_dict"],
            "distribution_instance_groups": env["distribution_instance_groups"],
            "is_hetero": env["is_hetero"],
            "module_name": env["module_name"],
            "log_level": env["log_level"],
            "framework_module": env["framework_module"],
            "input_dir": env["input_dir"],
            "input_config_dir": env["input_config_dir"],
            "output_dir": env["output_dir"],
            "num_cpus": env["num_cpus"],
            "num_gpus": env["num_gpus"],
            "num_neurons": env["num_neurons"],
            "model_dir": env["model_dir"],
            "module_dir": env["module_dir"],
            "training_env": env,
            "user_args": self.cmd_args(),
            "output_intermediate_dir": env["output_intermediate_dir"],
        }
        if env["topology"]:
            mapping["topology"] = env["topology"]
        for name, path in self.channel_input_dirs.items():
            mapping[f"channel_{name}"] = path
        for name, value in self.hyperparameters.items():
            mapping[f"hp_{name}"] = value
        return to_env_vars(mapping)

    def process_env(self) -> dict[str, str]:
        """Besides SM_*, the toolkit leaves these in its own environment, which the script inherits."""
        return {
            "CURRENT_HOST": self.current_host,
            "SAGEMAKER_JOB_NAME": str(self.all_hyperparameters.get(JOB_NAME, "")),
            "SAGEMAKER_REGION": self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", ""),
        }
