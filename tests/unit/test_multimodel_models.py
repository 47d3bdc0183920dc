"""Real models in a multi-model server's workers (serve/multimodel/replica.model_builder): the built-in model, AWS's
default handlers, and models with their own code/ whose modules share names but never each other's code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from serving_models import export_indicator_model

from devkit.script_models import AWS_ANSWER, copy_aws_model, write_script
from mxnet_byoc.serve import privatecode
from mxnet_byoc.serve.handler import DefaultAcceptError
from mxnet_byoc.serve.multimodel import replica as replica_module
from mxnet_byoc.serve.multimodel.replica import failure, model_builder

JSON = "application/json"
build = model_builder(JSON, env={})

# code/inference.py of a model with a helper module beside it, imported at the top, inside a function, through
# importlib, through pickle, and from a package of its own with a relative import.
SCRIPT = """
    import importlib
    import os
    import pickle

    import helper
    from pkg import mod


    def model_fn(model_dir):
        with open(os.path.join(model_dir, "thing.pkl"), "rb") as f:
            return pickle.load(f)


    def transform_fn(model, body, content_type, accept):
        import helper as again
        dynamic = importlib.import_module("helper")
        return {"top": helper.VALUE, "lazy": again.VALUE, "importlib": dynamic.VALUE, "package": mod.VALUE,
                "pickled": model.kind()}, "application/json"
"""
# A pickle of helper.Thing(), protocol 2, written by hand: no module named helper exists in this process.
THING_PICKLE = b"\x80\x02chelper\nThing\nq\x00)\x81q\x01."


def code_model(folder: Path, value: str) -> Path:
    folder.mkdir(parents=True)
    write_script(folder / "code", SCRIPT)
    write_script(folder / "code", f"VALUE = {value!r}\n\n\nclass Thing:\n    def kind(self):\n"
                                  f"        return 'thing of ' + VALUE\n", "helper.py")
    write_script(folder / "code" / "pkg", "", "__init__.py")
    write_script(folder / "code" / "pkg", f"from . import inner\nVALUE = inner.VALUE + {value!r}\n", "mod.py")
    write_script(folder / "code" / "pkg", "VALUE = 'pkg-'\n", "inner.py")
    (folder / "thing.pkl").write_bytes(THING_PICKLE)
    return folder


def answer(handler, body: bytes = b"[[1, 2]]", content_type: str = JSON) -> object:
    return json.loads(handler.invoke(body, content_type, JSON)[0])


def test_models_with_modules_of_the_same_names_each_import_their_own(tmp_path):
    first = build("first", code_model(tmp_path / "a", "A"))
    second = build("second", code_model(tmp_path / "b", "B"))
    for handler, value in ((first, "A"), (second, "B"), (first, "A")):
        assert answer(handler) == {"top": value, "lazy": value, "importlib": value, "package": "pkg-" + value,
                                   "pickled": "thing of " + value}
    assert "helper" not in sys.modules and "pkg" not in sys.modules  # nothing under the public names
    assert first.context.model_name == "first"
    private = [name for name in sys.modules if name.startswith(first.private.package)]
    first.close()
    assert not [name for name in sys.modules if name.startswith(first.private.package)] and private
    assert answer(second)["top"] == "B"
    second.close()


def test_the_built_in_model_and_awss_default_handlers(tmp_path):
    digits = build("digits", export_indicator_model(tmp_path / "digits"))
    body, content_type = digits.invoke(json.dumps({"instances": [[[0] * 28] * 28]}).encode(), JSON, JSON)
    assert content_type == JSON and len(json.loads(body)["predictions"]) == 1
    aws = build("aws", copy_aws_model(tmp_path / "aws"))
    assert aws.invoke(b"[[1, 2]]", JSON, JSON) == (AWS_ANSWER, JSON)
    digits.close()
    aws.close()


def test_an_entry_point_in_a_subfolder_of_the_code(tmp_path):
    folder = tmp_path / "m"
    write_script(folder / "code" / "serving", "from near import WHERE\n\n\ndef model_fn(d):\n    return WHERE\n\n\n"
                                                "def transform_fn(m, b, c, a):\n    return m\n", "entry.py")
    write_script(folder / "code" / "serving", "WHERE = 'beside the script'\n", "near.py")
    handler = model_builder(JSON, {"SAGEMAKER_PROGRAM": "serving/entry.py"})("m", folder)
    assert handler.invoke(b"", "text/plain", None) == (b"beside the script", JSON)
    handler.close()


def test_a_model_whose_code_fails_to_import_gets_its_own_reason(tmp_path):
    folder = tmp_path / "m"
    write_script(folder / "code", "import no_such_module_here\n")
    before = {n for n in sys.modules if n.startswith(privatecode.ROOT + ".")}
    with pytest.raises(Exception) as raised:
        build("m", folder)
    status, reason = failure(raised.value)
    assert status == 500 and "No module named 'no_such_module_here'" in reason
    assert {n for n in sys.modules if n.startswith(privatecode.ROOT + ".")} == before  # nothing of it is left


@pytest.mark.parametrize("make, who", [
    (export_indicator_model, "the built-in model answers application/json, application/jsonlines, text/csv"),
    (copy_aws_model, "AWS's default MXNet handlers answer application/json, text/csv, application/x-npy"),
])
def test_a_default_accept_that_the_handler_can_never_answer_is_refused_at_load(tmp_path, make, who):
    with pytest.raises(DefaultAcceptError) as raised:
        model_builder("image/png", {})("m", make(tmp_path / "m"))
    assert str(raised.value).startswith(f"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT=image/png: {who}")
    assert failure(raised.value)[0] == 400


def test_failure_statuses():
    assert failure(MemoryError())[0] == 507
    assert failure(KeyError("x")) == (500, "loading failed: internal error (KeyError); the server log has the "
                                           "traceback")
    assert replica_module.ModelNotLoaded.status == 404
