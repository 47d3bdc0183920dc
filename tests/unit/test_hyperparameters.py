"""hyperparameters.json as SageMaker writes it: every value a string, raw or JSON-encoded."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from mxnet_byoc.train import hyperparameters as hp
from mxnet_byoc.train.hyperparameters import HyperparameterError, Hyperparameters, parse


def test_empty_map_gives_the_documented_defaults():
    values = parse({})
    assert values == Hyperparameters()
    assert values.model == "cnn" and values.batch_size == 128 and values.augment is True
    assert set(values.as_dict()) == {s.name for s in hp.SPECS}


def test_the_specs_are_the_typed_fields():
    # One spec: every field of Hyperparameters is a row of SPECS with the field's type and default.
    fields = dataclasses.fields(Hyperparameters)
    assert [s.name for s in hp.SPECS] == [f.name for f in fields]
    defaults = Hyperparameters()
    for spec in hp.SPECS:
        assert spec.type in (int, float, bool, str)
        assert type(getattr(defaults, spec.name)) is spec.type, spec.name
        assert spec.default == getattr(defaults, spec.name)


def test_hyperparameters_are_frozen_and_checked_when_built():
    values = Hyperparameters(model="MLP", epochs="3")
    assert (values.model, values.epochs) == ("mlp", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        values.epochs = 4  # type: ignore[misc]
    with pytest.raises(HyperparameterError, match="'momentum'.*1.5"):
        Hyperparameters(momentum=1.5)
    with pytest.raises(HyperparameterError, match="'momentum'.*1.5"):
        dataclasses.replace(values, momentum=1.5)


def test_as_dict_is_the_json_object_metadata_records():
    values = parse({"epochs": "2", "model": "mlp", "augment": "False"})
    recorded = json.loads(json.dumps(values.as_dict()))
    assert recorded == {**{s.name: s.default for s in hp.SPECS}, "epochs": 2, "model": "mlp", "augment": False}
    assert Hyperparameters(**recorded) == values


@pytest.mark.parametrize("spec", hp.SPECS, ids=lambda s: s.name)
def test_every_default_passes_its_own_validation(spec):
    # The default written back as the generic Estimator would send it must read back unchanged.
    text = str(spec.default)
    assert getattr(parse({spec.name: text}), spec.name) == spec.default


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        # The generic Estimator sends str(value).
        ("epochs", "10", 10),
        ("learning_rate", "0.05", 0.05),
        ("optimizer", "adam", "adam"),
        ("augment", "True", True),
        ("augment", "False", False),
        ("contexts", "cpu(0),cpu(1)", "cpu(0),cpu(1)"),
        # Framework estimators send json.dumps(value).
        ("optimizer", '"sgd"', "sgd"),
        ("augment", "true", True),
        ("augment", "false", False),
        ("learning_rate", "1e-3", 0.001),
        ("contexts", '"cpu(0),cpu(1)"', "cpu(0),cpu(1)"),
        # A framework estimator given a string for a number JSON-encodes the string.
        ("epochs", '"10"', 10),
        ("learning_rate", '"0.05"', 0.05),
        ("augment", '"True"', True),
        # Whitespace, integral floats, choices in another case.
        ("epochs", " 7 ", 7),
        ("epochs", "3.0", 3),
        ("model", '"MLP"', "mlp"),
        # Values that are already JSON numbers or booleans (hand-written files, local tooling).
        ("epochs", 4, 4),
        ("augment", False, False),
        ("wd", 0, 0.0),
    ],
)
def test_raw_and_json_encoded_values_parse_alike(name, raw, expected):
    value = getattr(parse({name: raw}), name)
    assert value == expected
    assert type(value) is type(expected)


def test_dashes_count_as_underscores():
    values = parse({"batch-size": "64", "learning-rate": "0.01", "validation-fraction": "0.2"})
    assert (values.batch_size, values.learning_rate, values.validation_fraction) == (64, 0.01, 0.2)


def test_reserved_sagemaker_names_are_ignored():
    raw = {
        "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": '"s3://bucket/source.tar.gz"',
        "sagemaker_region": '"us-east-1"',
        "sagemaker_container_log_level": "20",
        "_tuning_objective_metric": "validation_accuracy",
        "epochs": "2",
    }
    values = parse(raw)
    assert values == Hyperparameters(epochs=2)


def test_unknown_name_is_rejected_with_name_value_and_known_names():
    with pytest.raises(HyperparameterError) as e:
        parse({"epochz": "3"})
    message = str(e.value)
    assert "'epochz'" in message
    assert "'3'" in message
    for name in ("epochs", "batch_size", "learning_rate", "model"):
        assert name in message


@pytest.mark.parametrize(
    "name, raw, accepted",
    [
        ("epochs", "ten", "an integer in [1, 10000]"),
        ("epochs", "0", "an integer in [1, 10000]"),
        ("epochs", "2.5", "an integer"),
        ("epochs", "true", "an integer"),
        ("batch_size", "-1", "an integer in [1, 65536]"),
        ("learning_rate", "0", "a number in (0.0, 10.0]"),
        ("learning_rate", "fast", "a number"),
        ("learning_rate", "NaN", "a number"),
        ("learning_rate", "Infinity", "a number"),
        ("momentum", "1.5", "a number in [0.0, 0.999]"),
        ("validation_fraction", "0.9", "a number in (0.0, 0.5]"),
        ("model", "resnet", "one of 'cnn', 'mlp'"),
        ("optimizer", '"rmsprop"', "one of 'adam', 'sgd', 'nesterov'"),
        ("lr_schedule", "step", "one of 'onecycle', 'constant'"),
        ("augment", "maybe", "true or false"),
        ("augment", "2", "true or false"),
        ("seed", "-3", "an integer"),
    ],
)
def test_wrong_type_or_range_names_parameter_value_and_what_is_accepted(name, raw, accepted):
    with pytest.raises(HyperparameterError) as e:
        parse({name: raw})
    message = str(e.value)
    assert f"'{name}'" in message
    assert repr(raw) in message
    assert accepted in message


def test_error_names_the_key_as_written_even_with_dashes():
    with pytest.raises(HyperparameterError) as e:
        parse({"batch-size": "many"})
    assert "batch_size" in str(e.value) and "'many'" in str(e.value)


def test_every_spec_documents_itself():
    for spec in hp.SPECS:
        assert spec.help.strip(), spec.name
        assert spec.accepted()
        if spec.type is float and spec.default is not None:
            assert math.isfinite(spec.default)
