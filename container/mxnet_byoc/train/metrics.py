"""The per-epoch metric line: its format and the regexes SageMaker reads it with.

One source of truth: training prints these lines, README.md documents them, and the launch tool
passes `metric_definitions()` to the Estimator. A test matches the regexes against real output.
"""

from __future__ import annotations

# Order is the order of the fields in the line.
EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "validation_loss",
    "validation_accuracy",
    "images_per_sec",
)
FINAL_METRICS = ("test_accuracy",)

def regex(name: str) -> str:
    # \b keeps "train_accuracy" from matching inside another name; no name here ends with another.
    return rf"\b{name}=([-+0-9.eE]+);"


def metric_definitions() -> list[dict[str, str]]:
    """`metric_definitions` for `sagemaker.estimator.Estimator`."""
    names = ("epoch",) + EPOCH_METRICS + FINAL_METRICS
    return [{"Name": name, "Regex": regex(name)} for name in names]


def format_line(values: dict[str, float], host: str | None = None) -> str:
    """`epoch=3; train_loss=0.0312; ...; host=algo-1;` with a fixed, regex-friendly number format."""
    parts = []
    for name, value in values.items():
        if isinstance(value, int):
            parts.append(f"{name}={value};")
        elif name == "images_per_sec":
            parts.append(f"{name}={value:.0f};")
        else:
            parts.append(f"{name}={value:.6f};")
    if host:
        parts.append(f"host={host};")
    return " ".join(parts)
