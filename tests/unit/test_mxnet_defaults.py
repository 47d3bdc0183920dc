"""AWS's default MXNet handlers (mxnet_byoc.serve.mxnet_defaults): the answers AWS's toolkits pin in their
tests, the C predict API path against the Module path byte for byte, and a clear 4xx for each client mistake."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from devkit.script_models import AWS_ANSWER, AWS_INPUT, copy_aws_model
from mxnet_byoc import modeldir
from mxnet_byoc.serve import http_errors, mxnet_defaults
from mxnet_byoc.serve.device import Device
from mxnet_byoc.serve.mediatypes import CSV, JSON, NPY

CPU = Device()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def aws_handler(aws_model):
    return mxnet_defaults.load_default(aws_model, CPU)


# ---- the answers AWS pins ---------------------------------------------------------------------------

def test_awss_pinned_answer_for_its_test_model(aws_handler):
    """sagemaker-mxnet-inference-toolkit, test/integration/local/test_default_model_fn.py."""
    assert aws_handler.invoke(json.dumps(AWS_INPUT).encode(), "application/json", "application/json") == (
        AWS_ANSWER, "application/json")
    assert aws_handler.invoke(json.dumps(AWS_INPUT).encode(), "application/json", None) == (AWS_ANSWER, JSON)


def test_the_module_path_gives_the_pinned_answer_too(aws_model):
    module = mxnet_defaults.default_model_fn(aws_model, CPU)
    defaults = mxnet_defaults.ModuleDefaults(CPU)
    prediction = defaults.predict_fn(defaults.input_fn(json.dumps(AWS_INPUT), JSON, module), module)
    assert defaults.output_fn(prediction, JSON) == (AWS_ANSWER, JSON)


# sagemaker-inference-toolkit, test/unit/test_encoder.py and test_decoder.py
@pytest.mark.parametrize("target, expected", [
    ([42, 6, 9], b"[42, 6, 9]"), ([42.0, 6.0, 9.0], b"[42.0, 6.0, 9.0]"), (["42", "6", "9"], b'["42", "6", "9"]'),
    ({42: {"6": 9.0}}, b'{"42": {"6": 9.0}}'),
])
def test_json_encoding_as_the_toolkit_pins_it(target, expected):
    assert mxnet_defaults.encode(target, JSON) == expected
    if not isinstance(target, dict):
        assert mxnet_defaults.encode(np.array(target), JSON) == expected


@pytest.mark.parametrize("target, expected", [
    ([42, 6, 9], b"42\n6\n9\n"), ([42.0, 6.0, 9.0], b"42.0\n6.0\n9.0\n"), (["42", "6", "9"], b"42\n6\n9\n"),
])
def test_csv_encoding_as_the_toolkit_pins_it(target, expected):
    assert mxnet_defaults.encode(target, CSV) == expected
    assert mxnet_defaults.encode(np.array(target), CSV) == expected


@pytest.mark.parametrize("target", [[42, 6, 9], [42.0, 6.0, 9.0]])
def test_npy_encoding_round_trips_as_the_toolkit_pins_it(target):
    np.testing.assert_equal(np.load(io.BytesIO(mxnet_defaults.encode(target, NPY))), np.array(target))


@pytest.mark.parametrize("body, content_type, expected", [
    (b"[42, 6, 9]", JSON, np.array([42, 6, 9])), ("[42.0, 6.0, 9.0]", JSON, np.array([42.0, 6.0, 9.0])),
    (b"42\n6\n9\n", CSV, np.array([42, 6, 9])), ("42.0\n6.0\n9.0\n", CSV, np.array([42.0, 6.0, 9.0])),
    (npy([42, 6, 9]), NPY, np.array([42, 6, 9])),
])
def test_decoding_as_the_toolkit_pins_it(body, content_type, expected):
    np.testing.assert_equal(mxnet_defaults.decode(body, content_type, mxnet_defaults.ANY_TYPES), expected)


@pytest.mark.parametrize("accept, expected", [
    ("application/json", JSON),
    ("application/unsupported, application/json, application/x-npy", JSON),  # the toolkit's own case
    ("text/csv, application/json", CSV), ("unsupported/type, text/csv", CSV),
    ("*/*", JSON), (None, JSON), ("", JSON),
    ("text/csv;q=0.5, application/x-npy", NPY), ("text/csv; charset=utf-8", CSV), ("text/html, */*", JSON),
])
def test_accept_picks_the_first_offered_type(accept, expected):
    assert mxnet_defaults.negotiate(accept, mxnet_defaults.MODULE_TYPES, JSON) == expected


def test_the_default_accept_answers_star(aws_handler):
    handler = mxnet_defaults.DefaultHandler(aws_handler.network, default_accept=CSV)
    assert handler.invoke(b"[[1, 2]]", JSON, "*/*") == (b"4.9999918937683105\n", CSV)


# ---- the C predict API path and the Module path agree byte for byte ---------------------------------

def bodies(rows: np.ndarray) -> list[tuple[bytes, str]]:
    return [(json.dumps(rows.tolist()).encode(), JSON),
            ("\n".join(",".join(repr(float(v)) for v in row.ravel()) for row in rows).encode(), CSV),
            (npy(rows), NPY), (npy(rows.astype(np.float32)), NPY)]


@pytest.mark.parametrize("name, shape", [("aws_model", (2,)), ("regression", (2,)), ("conv", (1, 8, 8))])
def test_c_api_and_module_answers_are_identical(request, name, shape):
    model_dir = request.getfixturevalue(name)
    rows = np.random.default_rng(1).normal(size=(5, *shape)) * 3
    fast = mxnet_defaults.load_default(model_dir, CPU)
    module = mxnet_defaults.default_model_fn(model_dir, CPU)
    defaults = mxnet_defaults.ModuleDefaults(CPU)
    for body, content_type in bodies(rows):
        for accept in (JSON, CSV, NPY):
            expected = defaults.output_fn(defaults.predict_fn(defaults.input_fn(body, content_type, module), module),
                                          accept)
            assert fast.invoke(body, content_type, accept) == expected, (name, content_type, accept)


def test_the_regression_trained_here_answers_its_line(regression):
    handler = mxnet_defaults.load_default(regression, CPU)
    body, _ = handler.invoke(b"[[1, 2], [0, 0], [-1, 0.5]]", JSON, JSON)
    np.testing.assert_allclose(json.loads(body), [[-0.5], [0.5], [-3.5]], atol=1e-4)
    assert handler.invoke(b"1,2\n0,0\n", CSV, CSV)[0].count(b"\n") == 2


def test_rows_are_reshaped_to_the_input(aws_handler, conv):
    """AWS reshapes CSV only; JSON and NPY bodies holding whole rows are read the same way here."""
    assert aws_handler.invoke(b"[1, 2]", JSON, JSON)[0] == AWS_ANSWER
    assert aws_handler.invoke(b"1,2", CSV, JSON)[0] == AWS_ANSWER
    handler = mxnet_defaults.load_default(conv, CPU)
    image = np.arange(64, dtype=np.float32).reshape(8, 8) / 64
    flat, _ = handler.invoke(json.dumps(image.ravel().tolist()).encode(), JSON, JSON)
    assert flat == handler.invoke(npy(image.reshape(1, 1, 8, 8)), NPY, JSON)[0]
    assert np.array(json.loads(flat)).shape == (1, 3)


def test_npy_answers_are_float64_as_awss_tolist_makes_them(aws_handler):
    body, kind = aws_handler.invoke(npy(np.array(AWS_INPUT)), NPY, NPY)
    answer = np.load(io.BytesIO(body))
    assert kind == NPY and answer.dtype == np.float64 and answer.tolist() == [[4.9999918937683105]]


# ---- client mistakes: 4xx with a reason (AWS answers 500) -------------------------------------------

@pytest.mark.parametrize("body, content_type, status, words", [
    (b"[[1, 2]]", "image/png", 415, "image/png"),
    (b"[[1, 2]]", None, 415, "no Content-Type"),
    (b"", JSON, 400, "empty"),
    (b"[[1, 2]", JSON, 400, "not valid JSON"),
    (b"[[1, 2, 3]]", JSON, 400, "3 values"),
    (b'[["a", "b"]]', JSON, 400, "numbers"),
    (b"[[1, 2], [3]]", JSON, 400, "numbers"),
    (b"1,x\n", CSV, 400, "comma-separated numbers"),
    (b"\xff\xfe", CSV, 400, "not UTF-8"),
    (b"not npy", NPY, 400, ".npy"),
    (b"\x93NUMPY\x03\x00\x09\x00\x00\x00{'\xff': 1}\n", NPY, 400, "not a .npy array: 'utf-8' codec"),
])
def test_client_mistakes(aws_handler, body, content_type, status, words):
    with pytest.raises(http_errors.ClientMistake) as raised:
        aws_handler.invoke(body, content_type, JSON)
    assert raised.value.status == status and words in str(raised.value)


def test_pickles_are_refused_not_loaded(aws_handler):
    with pytest.raises(http_errors.ClientMistake, match="unpickling refused") as raised:
        aws_handler.invoke(npy(np.array([{"a": 1}], dtype=object)), NPY, JSON)
    assert raised.value.status == 400


def test_an_accept_none_can_answer_is_406(aws_handler):
    with pytest.raises(http_errors.ClientMistake, match="define output_fn") as raised:
        aws_handler.invoke(b"[[1, 2]]", JSON, "application/xml")
    assert raised.value.status == 406


def test_csv_of_an_output_with_three_axes_is_406():
    with pytest.raises(http_errors.NotAcceptable, match="application/json"):
        mxnet_defaults.encode(np.zeros((2, 2, 2)), CSV)


# ---- models the default handlers cannot serve say why at load ---------------------------------------

def test_a_model_with_two_inputs_says_so(tmp_path, aws_model):
    model_dir = tmp_path / "model"
    copy_aws_model(model_dir)
    (model_dir / "model-shapes.json").write_text(json.dumps([{"name": "a", "shape": [1, 2]},
                                                             {"name": "b", "shape": [1, 2]}]))
    with pytest.raises(modeldir.ModelDirError, match="lists 2 inputs .a, b.; the default handlers feed one"):
        mxnet_defaults.load_default(model_dir, CPU)


def test_a_network_with_two_outputs_says_so(tmp_path):
    import mxnet as mx

    data = mx.sym.var("data")
    group = mx.sym.Group([mx.sym.FullyConnected(data, num_hidden=1, name="a"),
                          mx.sym.FullyConnected(data, num_hidden=1, name="b")])
    args = {name: mx.nd.ones(shape) for name, shape in zip(group.list_arguments(), group.infer_shape(data=(1, 2))[0])
            if name != "data"}
    mx.model.save_checkpoint(str(tmp_path / "model"), 0, group, args, {})
    (tmp_path / "model-shapes.json").write_text(json.dumps([{"name": "data", "shape": [1, 2]}]))
    with pytest.raises(modeldir.ModelDirError, match="has 2 outputs"):
        mxnet_defaults.load_default(tmp_path, CPU)


def test_a_model_not_in_mxnets_layout_names_the_missing_files(tmp_path):
    (tmp_path / "model-symbol.json").write_text("{}")
    with pytest.raises(modeldir.ModelDirError, match="model-0000.params, model-shapes.json missing"):
        mxnet_defaults.load_default(tmp_path, CPU)
    with pytest.raises(modeldir.ModelDirError, match="define model_fn"):
        mxnet_defaults.default_model_fn(tmp_path, CPU)
