"""Every hyperparameter: name, type, default, accepted values. `Hyperparameters` is the one source of truth
for README.md, validation and the training code, which reads its fields by attribute.

SageMaker hands every value over as a string. The generic Estimator sends `str(value)` ("True", "10"),
framework estimators send JSON ("\"adam\"", "true"): both parse here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from ..errors import ReasonError


class HyperparameterError(ReasonError, ValueError):
    """A hyperparameter is unknown or its value is not accepted; the message names both."""


@dataclass(frozen=True)
class Spec:
    """One hyperparameter as README.md and the error messages describe it, read off a field of Hyperparameters."""

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

    def convert(self, raw: Any) -> Any:
        """The value as this type, from a typed value or SageMaker's string; HyperparameterError if not accepted."""
        value = _decode(raw)
        if self.type in (int, float) and isinstance(value, str):
            # A framework estimator given the string "10" JSON-encodes it as "\"10\"": one more level.
            value = _decode(value)
        bad = HyperparameterError(
            f"hyperparameter {self.name!r}: value {raw!r} is not accepted; expected {self.accepted()}"
        )
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise bad
        if self.type is int:
            if isinstance(value, bool):
                raise bad
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise bad
        elif self.type is str:
            value = str(value) if not isinstance(value, str) else value
            value = value.strip()
        if self.choices is not None:
            if self.type is str:
                value = value.lower()
            if value not in self.choices:
                raise bad
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            raise bad
        if self.max is not None and value > self.max:
            raise bad
        return value


def _decode(raw: Any) -> Any:
    """Undo one level of JSON encoding when present: '"adam"' -> 'adam', '10' -> 10, 'true' -> True."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _hp(default: Any, help: str, **limits: Any) -> Any:
    """A field of Hyperparameters: its default, and what README.md and error messages say of it."""
    return field(default=default, metadata={"help": help, **limits})


@dataclass(frozen=True)
class Hyperparameters:
    """Every hyperparameter, typed. Fields may be given as SageMaker's strings or as values: each is
    converted and checked against its own field's limits, so an instance always holds accepted values."""

    model: str = _hp("cnn", "network: `cnn` (small batch-normalised CNN) or `mlp` (Dense 256 relu, Dense N)",
                     choices=("cnn", "mlp"))
    epochs: int = _hp(12, "passes over the training data", min=1, max=10000)
    batch_size: int = _hp(128, "images per step, summed over all devices and hosts (global batch)",
                          min=1, max=65536)
    learning_rate: float = _hp(0.003, "peak learning rate (the one-cycle schedule's maximum)",
                               min=0.0, max=10.0, min_inclusive=False)
    optimizer: str = _hp("adam", "`adam`, `sgd` (with `momentum`, 0 for plain SGD) or `nesterov`",
                         choices=("adam", "sgd", "nesterov"))
    momentum: float = _hp(0.9, "momentum for `sgd` and `nesterov`; 0 gives plain SGD", min=0.0, max=0.999)
    wd: float = _hp(0.0, "L2 weight decay, applied to every parameter", min=0.0, max=1.0)
    lr_schedule: str = _hp("onecycle", "`onecycle` (linear warm-up, then cosine decay to zero) or `constant`",
                           choices=("onecycle", "constant"))
    warmup_fraction: float = _hp(0.2, "share of all steps spent warming up under `onecycle`", min=0.0, max=1.0)
    augment: bool = _hp(True, "random shifts of up to 2 pixels per image and epoch (cnn only)")
    hidden_units: int = _hp(256, "width of the mlp's hidden layer", min=1, max=65536)
    validation_fraction: float = _hp(
        0.1, "share of the training channel held out for validation when no `test`/`validation` channel is given",
        min=0.0, max=0.5, min_inclusive=False)
    seed: int = _hp(42, "seeds initialisation, shuffling and augmentation", min=0, max=2**31 - 1)
    log_interval: int = _hp(100, "a progress line every N steps (0: none)", min=0, max=10**9)
    contexts: str = _hp("", "devices, e.g. `gpu(0),gpu(1)` or `cpu(0),cpu(1)`; empty: every GPU, else the CPU "
                            "(the MXNET_BYOC_CONTEXTS environment variable has the same effect and wins)")
    ps_port: int = _hp(9000, "port of the parameter-server scheduler on the first host (several hosts only)",
                       min=1024, max=65535)
    peer_timeout: int = _hp(
        60, "seconds a peer host may fail to resolve or to answer heartbeats (on `ps_port + 1`) before the job fails",
        min=1, max=86400)

    def __post_init__(self) -> None:
        for spec in SPECS:
            object.__setattr__(self, spec.name, spec.convert(getattr(self, spec.name)))

    def as_dict(self) -> dict[str, Any]:
        """Name -> value, as metadata.json records them."""
        return {spec.name: getattr(self, spec.name) for spec in SPECS}


_TYPES = get_type_hints(Hyperparameters)
SPECS: tuple[Spec, ...] = tuple(Spec(f.name, _TYPES[f.name], f.default, **f.metadata) for f in fields(Hyperparameters))
BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}


# Names SageMaker itself adds: framework estimators add `sagemaker_*`, tuning jobs add
# `_tuning_objective_metric`. They are not ours to validate, so they are set aside, not rejected.
RESERVED_PREFIXES = ("sagemaker_", "_tuning_objective_metric")


def parse(raw: Mapping[str, Any]) -> Hyperparameters:
    """Validate SageMaker's hyperparameters.json map and fill in defaults. Dashes count as underscores."""
    values: dict[str, Any] = {}
    for key, raw_value in raw.items():
        name = key.strip().replace("-", "_")
        if name.startswith(RESERVED_PREFIXES):
            continue
        if name not in BY_NAME:
            known = ", ".join(sorted(BY_NAME))
            raise HyperparameterError(f"unknown hyperparameter {key!r} (value {raw_value!r}); known: {known}")
        values[name] = raw_value
    return Hyperparameters(**values)


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
