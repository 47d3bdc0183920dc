"""Every hyperparameter: name, type, default, accepted values. The one source of truth for README.md,
the launch tool and validation.

SageMaker hands every value over as a string. The generic Estimator sends `str(value)` ("True", "10"),
framework estimators send JSON ("\"adam\"", "true"): both parse here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class HyperparameterError(ValueError):
    """A hyperparameter is unknown or its value is not accepted; the message names both."""


@dataclass(frozen=True)
class Spec:
    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True

    def accepted(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[self.type]
        if self.min is not None and self.max is not None:
            lo = "[" if self.min_inclusive else "("
            return f"{kind} in {lo}{self.min}, {self.max}]"
        if self.min is not None:
            return f"{kind} {'>=' if self.min_inclusive else '>'} {self.min}"
        return kind


SPECS: tuple[Spec, ...] = (
    Spec("model", str, "cnn", "network: `cnn` (small batch-normalised CNN) or `mlp` (Dense 256 relu, Dense N)",
         choices=("cnn", "mlp")),
    Spec("epochs", int, 12, "passes over the training data", min=1, max=10000),
    Spec("batch_size", int, 128, "images per step, summed over all devices and hosts (global batch)",
         min=1, max=65536),
    Spec("learning_rate", float, 0.003, "peak learning rate (the one-cycle schedule's maximum)",
         min=0.0, max=10.0, min_inclusive=False),
    Spec("optimizer", str, "adam", "`adam`, `sgd` (with `momentum`, 0 for plain SGD) or `nesterov`",
         choices=("adam", "sgd", "nesterov")),
    Spec("momentum", float, 0.9, "momentum for `sgd` and `nesterov`; 0 gives plain SGD", min=0.0, max=0.999),
    Spec("wd", float, 0.0, "L2 weight decay, applied to every parameter", min=0.0, max=1.0),
    Spec("lr_schedule", str, "onecycle",
         "`onecycle` (linear warm-up, then cosine decay to zero) or `constant`",
         choices=("onecycle", "constant")),
    Spec("warmup_fraction", float, 0.2, "share of all steps spent warming up under `onecycle`",
         min=0.0, max=1.0),
    Spec("augment", bool, True, "random shifts of up to 2 pixels per image and epoch (cnn only)"),
    Spec("hidden_units", int, 256, "width of the mlp's hidden layer", min=1, max=65536),
    Spec("validation_fraction", float, 0.1,
         "share of the training channel held out for validation when no `test`/`validation` channel is given",
         min=0.0, max=0.5, min_inclusive=False),
    Spec("seed", int, 42, "seeds initialisation, shuffling and augmentation", min=0, max=2**31 - 1),
    Spec("log_interval", int, 100, "a progress line every N steps (0: none)", min=0, max=10**9),
    Spec("contexts", str, "",
         "devices, e.g. `gpu(0),gpu(1)` or `cpu(0),cpu(1)`; empty: every GPU, else the CPU "
         "(the MXNET_BYOC_CONTEXTS environment variable has the same effect and wins)"),
    Spec("ps_port", int, 9000, "port of the parameter-server scheduler on the first host (several hosts only)",
         min=1024, max=65535),
    Spec("peer_timeout", int, 60,
         "seconds a peer host may fail to resolve or to answer heartbeats (on `ps_port + 1`) before the job fails",
         min=1, max=86400),
)

BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}


def defaults() -> dict[str, Any]:
    return {s.name: s.default for s in SPECS}


def _decode(raw: Any) -> Any:
    """Undo one level of JSON encoding when present: '"adam"' -> 'adam', '10' -> 10, 'true' -> True."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _convert(spec: Spec, raw: Any) -> Any:
    value = _decode(raw)
    if spec.type in (int, float) and isinstance(value, str):
        # A framework estimator given the string "10" JSON-encodes it as "\"10\"": one more level.
        value = _decode(value)
    bad = HyperparameterError(
        f"hyperparameter {spec.name!r}: value {raw!r} is not accepted; expected {spec.accepted()}"
    )
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if spec.type is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad
    elif spec.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise bad
    elif spec.type is str:
        value = str(value) if not isinstance(value, str) else value
        value = value.strip()
    if spec.choices is not None:
        if spec.type is str:
            value = value.lower()
        if value not in spec.choices:
            raise bad
    if spec.min is not None and (value < spec.min or (value == spec.min and not spec.min_inclusive)):
        raise bad
    if spec.max is not None and value > spec.max:
        raise bad
    return value


# Names SageMaker itself adds: framework estimators add `sagemaker_*`, tuning jobs add
# `_tuning_objective_metric`. They are not ours to validate, so they are set aside, not rejected.
RESERVED_PREFIXES = ("sagemaker_", "_tuning_objective_metric")


def parse(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate SageMaker's hyperparameters.json map and fill in defaults. Dashes count as underscores."""
    values = defaults()
    for key, raw_value in raw.items():
        name = key.strip().replace("-", "_")
        if name.startswith(RESERVED_PREFIXES):
            continue
        spec = BY_NAME.get(name)
        if spec is None:
            known = ", ".join(sorted(BY_NAME))
            raise HyperparameterError(f"unknown hyperparameter {key!r} (value {raw_value!r}); known: {known}")
        values[name] = _convert(spec, raw_value)
    return values


def markdown_table() -> str:
    """The hyperparameter table of README.md, generated so that it cannot drift from SPECS."""
    rows = ["| name | default | accepted | meaning |", "| --- | --- | --- | --- |"]
    for s in SPECS:
        if isinstance(s.default, str):
            default = f"`{s.default}`" if s.default else "(empty)"
        else:
            default = json.dumps(s.default)
        rows.append(f"| `{s.name}` | {default} | {s.accepted()} | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
