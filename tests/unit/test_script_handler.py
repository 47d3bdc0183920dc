"""The user's inference script under the toolkit's contract (mxnet_byoc.serve.script): which functions run,
the `context` variants, AWS's defaults in the gaps, and errors with reasons."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from devkit.script_models import (
    AWS_ANSWER,
    THREE_FUNCTIONS_SCRIPT,
    TRANSFORM_SCRIPT,
    write_script,
)
from mxnet_byoc.serve import http_errors, mxnet_defaults, script
from mxnet_byoc.serve.device import Device
from mxnet_byoc.serve.http_errors import UserCodeFailure
from mxnet_byoc.serve.mediatypes import CSV, JSON, NPY
from mxnet_byoc.serve.script import ScriptError, UserCode

CPU = Device()
_counter = iter(range(10**6))


def load(tmp_path: Path, text: str | None, model_dir: Path, program: str | None = "inference.py",
         default_accept: str = JSON, device: Device = CPU):
    """The handler for `text` as code/<unique module>.py (unique: every test imports a fresh module)."""
    name = f"user_script_{next(_counter)}"
    code_dir = tmp_path / "code"
    if text is not None:
        write_script(code_dir, text, f"{name}.py")
    code = UserCode(code_dir, name if program else "inference", named=bool(program))
    return script.load_script(code, model_dir, device, default_accept)


def test_model_fn_and_transform_fn_only(tmp_path, regression):
    handler = load(tmp_path, TRANSFORM_SCRIPT, regression)
    assert isinstance(handler, script.ScriptHandler)
    body, content_type = handler.invoke(b"[[1, 2], [0, 0]]", JSON, JSON)
    assert content_type == JSON
    np.testing.assert_allclose(json.loads(body)["outputs"], [[-0.5], [0.5]], atol=1e-4)


def test_input_predict_output_with_context(tmp_path, regression):
    handler = load(tmp_path, THREE_FUNCTIONS_SCRIPT, regression, device=Device(3))
    body, content_type = handler.invoke(b'{"values": [1, 2.5]}', JSON, "text/plain")
    assert content_type == "application/vnd.doubled+json"
    assert json.loads(body) == {"doubled": [2.0, 5.0], "gpu_id": 3, "model_dir": str(regression)}


def test_an_empty_script_gets_awss_default_handlers(tmp_path, aws_model):
    handler = load(tmp_path, "# nothing here\n", aws_model)
    assert isinstance(handler, mxnet_defaults.DefaultHandler)
    assert handler.invoke(b"[[1, 2]]", JSON, JSON) == (AWS_ANSWER, JSON)


def test_no_script_at_all_in_code_gets_the_default_handlers(tmp_path, aws_model):
    (tmp_path / "code").mkdir()
    handler = load(tmp_path, None, aws_model, program=None)
    assert handler.invoke(b"[[1, 2]]", JSON, None) == (AWS_ANSWER, JSON)


def test_a_named_script_that_is_missing_says_which(tmp_path, aws_model):
    write_script(tmp_path / "code", "x = 1\n", "other.py")
    with pytest.raises(ScriptError, match=r"inference.py does not exist .*Python files in .*: other.py"):
        script.load_script(UserCode(tmp_path / "code", "inference", named=True), aws_model, CPU, JSON)


def test_no_model_fn_and_a_model_not_in_mxnets_layout(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ScriptError, match="not in MXNet's layout .* define model_fn"):
        load(tmp_path, "# empty\n", tmp_path / "model")
    with pytest.raises(ScriptError, match="defines no model_fn, and the default model_fn loads MXNet's layout"):
        load(tmp_path, "def predict_fn(data, model):\n    return data\n", tmp_path / "model")


def test_only_predict_fn_gets_the_module_and_default_input_and_output(tmp_path, aws_model):
    handler = load(tmp_path, """
        import mxnet as mx

        def predict_fn(data, model):
            assert isinstance(model, mx.mod.Module) and isinstance(data, mx.io.NDArrayIter)
            return model.predict(data) * 2
    """, aws_model)
    body, content_type = handler.invoke(b"1,2\n", "text/csv", "text/csv")
    assert (body, content_type) == (b"9.999983787536621\n", "text/csv")
    assert "AWS's defaults for input_fn, output_fn" in str(handler)


def test_a_gluon_block_gets_the_gluon_defaults(tmp_path, conv):
    handler = load(tmp_path, """
        import os
        import mxnet as mx

        def model_fn(model_dir):
            return mx.gluon.SymbolBlock.imports(os.path.join(model_dir, "model-symbol.json"), ["data"],
                                                os.path.join(model_dir, "model-0000.params"))
    """, conv)
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    expected = mxnet_defaults.load_default(conv, CPU).invoke(json.dumps(image.tolist()).encode(), JSON, JSON)
    assert handler.invoke(json.dumps(image.tolist()).encode(), JSON, JSON) == expected
    buffer = io.BytesIO()
    np.save(buffer, image)
    body, content_type = handler.invoke(buffer.getvalue(), "application/x-npy", "application/x-npy")
    assert content_type == "application/x-npy" and np.load(io.BytesIO(body)).tolist() == json.loads(expected[0])
    with pytest.raises(http_errors.UnsupportedMediaType):  # AWS's Gluon handlers read no CSV
        handler.invoke(b"1,2", "text/csv", JSON)


def test_an_input_fn_with_model_gets_the_model(tmp_path, aws_model):
    handler = load(tmp_path, """
        def model_fn(model_dir):
            return {"scale": 10}

        def input_fn(request_body, content_type, model):
            return float(request_body) * model["scale"]

        def predict_fn(data, model):
            return data + 1

        def output_fn(prediction, accept):
            return str(prediction)
    """, aws_model)
    assert handler.invoke(b"4", "text/plain", "text/plain") == (b"41.0", "text/plain")


def test_bodies_are_str_for_json_and_csv_and_bytes_otherwise(tmp_path, aws_model):
    handler = load(tmp_path, """
        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept, context):
            headers = context.get_all_request_header(0)
            return {"type": type(body).__name__, "content_type": content_type, "accept": accept,
                    "header": headers["Content-Type"], "model_dir": context.system_properties["model_dir"]}
    """, aws_model, default_accept="text/csv")
    answers = {ct: json.loads(handler.invoke(b"1", ct, None)[0]) for ct in ("application/json", "text/csv",
                                                                                "application/octet-stream")}
    assert [a["type"] for a in answers.values()] == ["str", "str", "bytes"]
    assert answers["text/csv"]["accept"] == "text/csv"  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT for no Accept
    assert answers["application/json"]["header"] == "application/json"
    # Anything JSON-serialisable goes out as Multi Model Server writes it (indent=2), typed as the Accept.
    body, content_type = handler.invoke(b"1", "application/json", "application/json")
    assert body.startswith(b'{\n  "type": "str"') and content_type == "application/json"


def test_model_fn_with_context_and_pre_and_warmup_hooks(tmp_path, aws_model):
    handler = load(tmp_path, """
        calls = []

        def pre_model_fn(model_dir):
            calls.append("pre")

        def model_fn(model_dir, context):
            calls.append("model")
            return {"gpu_id": context.system_properties["gpu_id"]}

        def model_warmup_fn(model_dir, model):
            calls.append("warmup")

        def transform_fn(model, body, content_type, accept):
            return repr((calls, model["gpu_id"])), "text/plain"
    """, aws_model)
    assert handler.invoke(b"", None, None) == (b"(['pre', 'model', 'warmup'], None)", "text/plain")


# ---- errors -----------------------------------------------------------------------------------------

def test_a_handler_exception_is_500_with_the_reason_and_a_logged_traceback(tmp_path, aws_model, caplog):
    handler = load(tmp_path, """
        def model_fn(model_dir):
            return None

        def input_fn(request_body, content_type):
            raise ValueError("cannot read " + request_body)

        def predict_fn(data, model):
            return data
    """, aws_model)
    with caplog.at_level(logging.ERROR, logger="mxnet_byoc.script"):
        with pytest.raises(UserCodeFailure) as raised:
            handler.invoke(b"abc", JSON, JSON)
    assert raised.value.status == 500
    assert str(raised.value) == "input_fn raised ValueError: cannot read abc"
    assert "Traceback" in caplog.text and 'raise ValueError("cannot read "' in caplog.text


def test_an_exception_with_a_status_code_answers_with_it(tmp_path, aws_model):
    handler = load(tmp_path, """
        class BadInput(Exception):
            def __init__(self, status_code, message):
                super().__init__(message)
                self.status_code, self.message = status_code, message

        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            raise BadInput(422, "send a positive number")
    """, aws_model)
    with pytest.raises(UserCodeFailure) as raised:
        handler.invoke(b"-1", JSON, JSON)
    assert (raised.value.status, str(raised.value)) == (422, "send a positive number")


def test_text_bodies_arrive_as_str_and_one_that_is_not_utf8_is_400(tmp_path, aws_model):
    handler = load(tmp_path, """
        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            return type(body).__name__
    """, aws_model)
    assert handler.invoke(bytearray(b"1,2"), CSV, JSON)[0] == b"str"
    assert handler.invoke(b"\xff", NPY, JSON)[0] == b"bytes"
    with pytest.raises(http_errors.BadRequest, match="the application/json body is not UTF-8"):
        handler.invoke(b"\xff", JSON, JSON)


def test_a_result_that_cannot_be_sent_is_500_with_the_reason(tmp_path, aws_model):
    handler = load(tmp_path, """
        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            return object()
    """, aws_model)
    with pytest.raises(UserCodeFailure, match="returned a builtins.object: return bytes, str or a JSON-serialisable"):
        handler.invoke(b"1", JSON, JSON)


@pytest.mark.parametrize("text, words", [
    ("def model_fn(model_dir):\n    return 1\ndef transform_fn(m, b, c, a):\n    return b\n"
     "def input_fn(b, c):\n    return b\n", "Cannot use transform_fn implementation in conjunction with input_fn"),
    ("def model_fn(a, b, c):\n    return 1\n",
     r"model_fn in .* takes 3 arguments; the contract passes 1 \(model_dir\)"),
    ("def model_fn(model_dir):\n    raise RuntimeError('no weights here')\n",
     "model_fn raised RuntimeError: no weights here"),
    ("import not_a_module_anywhere\n", "importing .* failed: ModuleNotFoundError: No module named"),
    ("raise SystemExit(3)\n", "importing .* failed: SystemExit: 3"),
    ("model_fn = 42\n", "model_fn in .* is a int, not a function"),
    ("class Thing:\n    pass\ndef model_fn(model_dir):\n    return Thing()\n",
     "returned a .*Thing, which the default predict_fn cannot run .* define predict_fn or transform_fn"),
])
def test_a_script_that_cannot_serve_says_why(tmp_path, aws_model, text, words):
    with pytest.raises(ScriptError, match=words):
        load(tmp_path, text, aws_model)


def test_a_status_set_through_context_is_the_answer(tmp_path, aws_model):
    handler = load(tmp_path, """
        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept, context):
            context.set_response_status(code=429, phrase="slow down")
            return "ignored"
    """, aws_model)
    with pytest.raises(UserCodeFailure) as raised:
        handler.invoke(b"1", JSON, JSON)
    assert (raised.value.status, str(raised.value)) == (429, "slow down")


def test_module_name_from_sagemaker_program():
    assert script.module_name("inference.py") == "inference"
    assert script.module_name("/home/me/project/serve_it.py") == "serve_it"  # SDK local mode sends the path
    assert script.module_name("entry") == "entry"
    assert script.module_name(None) == "inference"


# A transform_fn that answers what `context` says about the request.
CONTEXT_SCRIPT = """
    def model_fn(model_dir):
        return None


    def transform_fn(model, body, content_type, accept, context):
        headers = context.request_processor[0].get_request_properties()
        return {
            "custom": context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes"),
            "as_mms_spells_it": headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            "lower_case": headers["x-amzn-sagemaker-custom-attributes"],
            "target": headers.get("X-Amzn-SageMaker-Target-Model"),
            "other": headers.get("X-Trace-Id"),
            "model_name": context.model_name,
        }, "application/json"
"""


def test_the_requests_headers_reach_context_custom_attributes_included(tmp_path, aws_model):
    handler = load(tmp_path, CONTEXT_SCRIPT, aws_model)
    headers = {"x-amzn-sagemaker-custom-attributes": "trace=1,tenant=a", "x-amzn-sagemaker-target-model": "m.tar.gz",
               "x-trace-id": "42"}
    body, _ = handler.invoke(b"{}", JSON, JSON, headers)
    assert json.loads(body) == {"custom": "trace=1,tenant=a", "as_mms_spells_it": "trace=1,tenant=a",
                                "lower_case": "trace=1,tenant=a", "target": "m.tar.gz", "other": "42",
                                "model_name": "model"}


def test_an_entry_point_in_a_subfolder_is_found_there_with_its_neighbours(tmp_path, aws_model):
    write_script(tmp_path / "code" / "src", "from helpers_beside import VALUE\n\n\ndef model_fn(d):\n"
                                            "    return VALUE\n\n\ndef transform_fn(m, b, c, a):\n    return m\n",
                 "entry_in_subfolder.py")
    write_script(tmp_path / "code" / "src", "VALUE = 'found'\n", "helpers_beside.py")
    code = UserCode(tmp_path / "code", "src/entry_in_subfolder.py", named=True)
    assert code.path == tmp_path / "code" / "src" / "entry_in_subfolder.py" and code.module_name == "entry_in_subfolder"
    try:
        handler = script.load_script(code, aws_model, CPU, JSON)
        assert handler.invoke(b"", "text/plain", None) == (b"found", JSON)
    finally:
        for folder in code.folders:
            sys.path.remove(str(folder))
        sys.modules.pop("entry_in_subfolder", None)
        sys.modules.pop("helpers_beside", None)


def test_a_missing_subfolder_entry_point_names_the_files_there_are(tmp_path, aws_model):
    write_script(tmp_path / "code" / "src", "x = 1\n", "other.py")
    code = UserCode(tmp_path / "code", "src/entry.py", named=True)
    with pytest.raises(ScriptError, match=r"code/entry.py does not exist \(SAGEMAKER_PROGRAM names src/entry.py; "
                                          r"Python files in .*: src/other.py\)"):
        script.load_script(code, aws_model, CPU, JSON)


def test_the_host_path_that_local_mode_sends_is_read_as_the_file_name(tmp_path):
    code = UserCode(tmp_path / "code", "/home/me/project/serve_it.py", named=True)
    assert code.path == tmp_path / "code" / "serve_it.py"


def test_a_default_accept_the_default_output_fn_cannot_write_is_refused_at_load(tmp_path, regression):
    with pytest.raises(ScriptError, match=r"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT=image/png: the default output_fn "
                                          r"answers application/json, text/csv, application/x-npy; define output_fn"):
        load(tmp_path, "def model_fn(d):\n    return None\n\ndef predict_fn(x, m):\n    return x\n", regression,
             default_accept="image/png")
