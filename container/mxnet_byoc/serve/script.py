"""A user's inference script (script mode) as a `Handler`, under the SageMaker inference toolkit's contract.

The script may define any of these; what it leaves out, AWS's default MXNet handlers fill (mxnet_defaults):

    model_fn(model_dir)                          -> model       (default: MXNet's layout as a Module)
    input_fn(request_body, content_type)         -> data        (default: JSON/CSV/NPY to an MXNet array)
    predict_fn(data, model)                      -> prediction  (default: Module.predict, or block(data))
    output_fn(prediction, accept)                -> body, or (body, content_type)
    transform_fn(model, request_body, content_type, accept)    instead of the three above
    pre_model_fn(model_dir), model_warmup_fn(model_dir, model) before and after model_fn

Each function may take one more argument, `context` (as the toolkit decides, by counting parameters):
`context.system_properties` holds `model_dir` and `gpu_id` (None on the CPU), so a handler knows the device
this worker computes on; `context.model_name` is the model's name on a server of many models; the request's
headers (`X-Amzn-SageMaker-Custom-Attributes` among them) are `context.get_request_header(0, name)`. An
input_fn with a parameter named `model` also gets the model (AWS's MXNet variant). Bodies of
`application/json` and `text/csv` arrive as str, others as bytes. A transform_fn or output_fn may return
bytes, str or any JSON-serialisable object; the response's Content-Type is the one it returns with the body,
else the Accept header (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT for `*/*` or none).

An exception in the user's code is a 500 whose JSON reason names the function and the exception; its
traceback goes to the log. An exception with an integer `status_code` between 400 and 599 (the toolkit's
BaseInferenceToolkitError) answers with that status and its `message`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import modeldir
from ..errors import ReasonError
from . import mxnet_defaults
from .codecs import utf8_text
from .device import Device
from .http_errors import ClientMistake, UserCodeFailure
from .mediatypes import CSV, JSON
from .privatecode import PrivateCode
from .settings import DEFAULT_INVOCATIONS_ACCEPT

log = logging.getLogger("mxnet_byoc.script")

DEFAULT_MODULE = "inference"  # the toolkit's module when SAGEMAKER_PROGRAM is unset
HANDLER_FUNCTIONS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn", "pre_model_fn",
                     "model_warmup_fn")
# Number of arguments each function takes without `context`.
ARITY = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4, "pre_model_fn": 1,
         "model_warmup_fn": 2}
UTF8_TYPES = (JSON, CSV)  # bodies the toolkit hands over as str
REASON_LIMIT = 1000  # characters of an exception's message in a response
SINGLE_MODEL_NAME = "model"  # context.model_name with one model per server, as AWS's toolkit names it


class ScriptError(ReasonError):
    """The script cannot serve (cannot be imported, breaks the contract, model_fn failed); the message says
    why, for /ping and the log."""


@dataclass(frozen=True)
class UserCode:
    """Where the script is: `code_dir` (its imports' folder) and SAGEMAKER_PROGRAM as given (`inference.py`,
    `inference`, `sub/inference.py` for an entry point in a subfolder of source_dir, or the host's path of the
    script that SDK local mode sends)."""

    code_dir: Path
    program: str = DEFAULT_MODULE
    named: bool = False  # SAGEMAKER_PROGRAM named it: its absence is an error, not "no script"

    @property
    def module_name(self) -> str:
        return module_name(self.program)

    @property
    def path(self) -> Path:
        """The script: `program` inside the code folder when it is a relative path there, else the file of its
        name at the top of the code folder (where the SDK puts an entry point given without source_dir)."""
        relative = Path(self.program if self.program.endswith(".py") else f"{self.program}.py")
        if not relative.is_absolute() and ".." not in relative.parts and len(relative.parts) > 1:
            inside = self.code_dir / relative
            if inside.is_file():
                return inside
        return self.code_dir / f"{self.module_name}.py"

    @property
    def folders(self) -> list[Path]:
        """Where the script's imports are found: its own folder first, then the code folder."""
        return list(dict.fromkeys([self.path.parent, self.code_dir]))


def module_name(program: str | None) -> str:
    """SAGEMAKER_PROGRAM (`inference.py`, `inference`, `sub/inference.py` or a path SDK local mode sends) ->
    `inference`."""
    if not program:
        return DEFAULT_MODULE
    name = Path(program).name
    return name[:-3] if name.endswith(".py") else name


# ---- the toolkit's `context` ------------------------------------------------------------------------

class Headers(dict):
    """A request's headers under their usual spelling, looked up in any case (HTTP's names are case-insensitive,
    and handlers written for Multi Model Server read them as `X-Amzn-SageMaker-Custom-Attributes`)."""

    def __getitem__(self, key: str) -> str:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        for name, value in self.items():
            if name.lower() == str(key).lower():
                return value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or any(name.lower() == str(key).lower() for name in self)


# SageMaker's own request headers, spelled as SageMaker's documentation spells them.
SAGEMAKER_HEADERS = {name.lower(): name for name in (
    "X-Amzn-SageMaker-Custom-Attributes", "X-Amzn-SageMaker-Target-Model", "X-Amzn-SageMaker-Target-Variant",
    "X-Amzn-SageMaker-Target-Container-Hostname", "X-Amzn-SageMaker-Inference-Id",
    "X-Amzn-SageMaker-Enable-Explanations", "X-Amzn-SageMaker-Session-Id")}


def request_headers(headers: Mapping[str, str] | None, content_type: str | None, accept: str) -> Headers:
    """What `context` gives a handler: every header of the request (SageMaker's under their documented spelling,
    others as `Title-Case`), with Content-Type and the Accept the handler answers."""
    found = Headers()
    for name, value in (headers or {}).items():
        lowered = name.lower()
        found[SAGEMAKER_HEADERS.get(lowered, "-".join(part.capitalize() for part in lowered.split("-")))] = value
    found["Content-Type"] = content_type or ""
    found["Accept"] = accept
    return found


class RequestProcessor:
    """One request's headers and the response's status and headers, as Multi Model Server's."""

    def __init__(self, headers: dict[str, str]):
        self._headers = headers
        self._response_headers: dict[str, str] = {}
        self._status: int = 200
        self._phrase: str | None = None

    def get_request_property(self, key: str) -> str | None:
        return self._headers.get(key) or next((v for k, v in self._headers.items() if k.lower() == key.lower()),
                                              None)

    def get_request_properties(self) -> dict[str, str]:
        return self._headers

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status, self._phrase = code, reason_phrase

    def get_response_status_code(self) -> int:
        return self._status

    def get_response_status_phrase(self) -> str | None:
        return self._phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_headers[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_headers


class Context:
    """What the toolkit passes as `context`: Multi Model Server's Context, for the one model of this server."""

    def __init__(self, model_dir: Path, device: Device, model_name: str = SINGLE_MODEL_NAME):
        self.model_name = model_name
        self.manifest = None
        self.metrics = None
        self.request_ids = {0: ""}
        self.system_properties = {
            "model_dir": str(model_dir),
            "gpu_id": device.gpu_id,
            "batch_size": 1,
            "server_name": "mxnet-byoc",
            "server_version": "1",
        }
        self.request_processor = [RequestProcessor({})]

    def get_request_id(self, idx: int = 0) -> str:
        return self.request_ids.get(idx, "")

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        processor = self.request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor:
            processor.report_status(code, phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_response_headers()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.request_processor[idx].add_response_property(key, value)


# ---- loading ----------------------------------------------------------------------------------------

def import_script(code: UserCode, private: PrivateCode | None = None) -> ModuleType | None:
    """The user's module, imported from its file; None when SAGEMAKER_PROGRAM named nothing and there is no
    inference.py (the toolkit then uses its defaults). Its folders go on sys.path for its own imports, or, with
    `private` (a server of many models), it is imported into the model's private package (privatecode.py)."""
    path = code.path
    if not path.is_file():
        if not code.named:
            return None
        present = sorted(p.relative_to(code.code_dir).as_posix() for p in code.code_dir.rglob("*.py")
                         if "__pycache__" not in p.parts)[:20] if code.code_dir.is_dir() else []
        raise ScriptError(f"the inference script {path} does not exist (SAGEMAKER_PROGRAM names {code.program}; "
                          f"Python files in {code.code_dir}: {', '.join(present) or 'none'})")
    try:
        if private is not None:
            return private.load_file(path, code.module_name)
        for folder in reversed(code.folders):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
        spec = importlib.util.spec_from_file_location(code.module_name, path)
        if spec is None or spec.loader is None:
            raise ScriptError(f"{path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[code.module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(code.module_name, None)
            raise
        return module
    except ScriptError:
        raise
    except BaseException as e:  # SystemExit too: a script must not end the worker
        log.error("importing %s failed", path, exc_info=e)
        raise ScriptError(f"importing {path} failed: {_describe(e)}") from None


def user_functions(module: ModuleType | None) -> dict[str, Callable[..., Any]]:
    """The contract's functions the module defines, checked: callable, a number of parameters the toolkit
    accepts, and no transform_fn beside input_fn, predict_fn or output_fn."""
    if module is None:
        return {}
    found = {name: getattr(module, name) for name in HANDLER_FUNCTIONS if getattr(module, name, None) is not None}
    for name, fn in found.items():
        if not callable(fn):
            raise ScriptError(f"{name} in {module.__file__} is a {type(fn).__name__}, not a function")
        count, expected = _parameter_count(fn), _expected_arity(name, fn)
        if count not in (expected, expected + 1):
            raise ScriptError(
                f"{name} in {module.__file__} takes {count} arguments; the contract passes {expected} "
                f"({_signature_text(name, fn)}), or {expected + 1} with `context` last")
    if "transform_fn" in found and {"input_fn", "predict_fn", "output_fn"} & found.keys():
        raise ScriptError("Cannot use transform_fn implementation in conjunction with input_fn, predict_fn, "
                          f"and/or output_fn implementation ({module.__file__})")
    return found


def load_script(code: UserCode | None, model_dir: Path, device: Device, default_accept: str,
                private: PrivateCode | None = None, model_name: str = SINGLE_MODEL_NAME) -> Any:
    """The handler for `model_dir` with the user's script: AWS's default handlers, end to end, when the
    script defines none of the functions (or there is none), else a ScriptHandler. `private`: the model's
    private package, for a server of many models (its code is imported and called in it)."""
    try:
        module = import_script(code, private) if code else None
        functions = user_functions(module)
        if not functions:
            where = (f"{code.path} defines none of {', '.join(HANDLER_FUNCTIONS[:5])}" if module
                     else "no inference script")
            if not mxnet_defaults.in_mxnet_layout(model_dir):
                raise ScriptError(f"{where}, and {model_dir} is not in MXNet's layout "
                                  f"({', '.join(mxnet_defaults.LAYOUT_FILES)}), which the default model_fn loads: "
                                  "define model_fn(model_dir) in your inference script to load your model")
            if private is not None:
                private.close()
            return mxnet_defaults.load_default(model_dir, device, default_accept)
        return ScriptHandler.build(module, functions, model_dir, device, default_accept, private, model_name)
    except BaseException:
        if private is not None:
            private.close()
        raise


class ScriptHandler:
    """The user's functions, with AWS's defaults in the gaps, answering /invocations."""

    def __init__(self, module: Any, model: Any, transform: Callable[..., Any], context: Context, default_accept: str,
                 description: str, private: PrivateCode | None = None):
        self.module = module
        self.model = model
        self.context = context
        self.default_accept = default_accept
        self.private = private
        self._transform = transform
        self._description = description

    @classmethod
    def build(cls, module: ModuleType | None, functions: dict[str, Callable[..., Any]], model_dir: Path,
              device: Device, default_accept: str, private: PrivateCode | None = None,
              model_name: str = SINGLE_MODEL_NAME) -> ScriptHandler:
        with private.active() if private is not None else contextlib.nullcontext():
            return cls._build(module, functions, model_dir, device, default_accept, private, model_name)

    @classmethod
    def _build(cls, module: ModuleType | None, functions: dict[str, Callable[..., Any]], model_dir: Path,
               device: Device, default_accept: str, private: PrivateCode | None, model_name: str) -> ScriptHandler:
        context = Context(model_dir, device, model_name)
        source = getattr(module, "__file__", "the script")

        def bound(name: str) -> Callable[..., Any]:
            fn = functions[name]
            if _parameter_count(fn) == _expected_arity(name, fn):
                return fn
            return lambda *args: fn(*args, context)

        if "pre_model_fn" in functions:
            _load_step("pre_model_fn", bound("pre_model_fn"), str(model_dir))
        if "model_fn" in functions:
            model = _load_step("model_fn", bound("model_fn"), str(model_dir))
        else:
            try:
                model = mxnet_defaults.default_model_fn(model_dir, device)
            except modeldir.ModelDirError as e:
                raise ScriptError(f"{source} defines no model_fn, and {e}") from None
        if "model_warmup_fn" in functions:
            _load_step("model_warmup_fn", bound("model_warmup_fn"), str(model_dir), model)

        if "transform_fn" in functions:
            transform = _guarded("transform_fn", bound("transform_fn"))
            defaulted: list[str] = []
        else:
            defaults = mxnet_defaults.defaults_for(model, device, default_accept)
            defaulted = [name for name in ("input_fn", "predict_fn", "output_fn") if name not in functions]
            if "predict_fn" in defaulted and defaults.predict_fn is None:
                raise ScriptError(
                    f"model_fn returned a {type(model).__module__}.{type(model).__name__}, which the default "
                    f"predict_fn cannot run (it runs MXNet Modules and Gluon blocks): define predict_fn or "
                    f"transform_fn in {source}")
            if "output_fn" in defaulted and default_accept not in defaults.content_types:
                raise ScriptError(f"{DEFAULT_INVOCATIONS_ACCEPT}={default_accept}: the default output_fn answers "
                                  f"{', '.join(defaults.content_types)}; define output_fn in {source} to answer "
                                  f"{default_accept}")
            if "input_fn" in defaulted and defaults.input_takes_model and len(model.data_shapes) != 1:
                raise ScriptError(f"the default input_fn feeds networks with one input; this Module has "
                                  f"{len(model.data_shapes)}: define input_fn in {source}")
            input_fn = bound("input_fn") if "input_fn" in functions else defaults.input_fn
            takes_model = (defaults.input_takes_model if "input_fn" in defaulted
                           else "model" in inspect.signature(functions["input_fn"]).parameters)
            predict_fn = bound("predict_fn") if "predict_fn" in functions else defaults.predict_fn
            output_fn = bound("output_fn") if "output_fn" in functions else defaults.output_fn
            transform = _pipeline(_guarded("input_fn", input_fn), takes_model, _guarded("predict_fn", predict_fn),
                                  _guarded("output_fn", output_fn))

        defined = [name for name in HANDLER_FUNCTIONS if name in functions]
        description = (f"inference script {source}: {', '.join(defined)}"
                       + (f" (AWS's defaults for {', '.join(defaulted)})" if defaulted else "")
                       + f"; model {type(model).__name__} on {device}")
        return cls(module, model, transform, context, default_accept, description, private)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        if not accept or accept == "*/*":
            accept = self.default_accept
        data: bytes | str = utf8_text(body, content_type) if content_type in UTF8_TYPES else bytes(body)
        processor = RequestProcessor(request_headers(headers, content_type, accept))
        self.context.request_processor = [processor]
        if self.private is None:
            result = self._transform(self.model, data, content_type, accept)
        else:
            with self.private.active():
                result = self._transform(self.model, data, content_type, accept)
        status = processor.get_response_status_code()
        if isinstance(status, int) and 400 <= status <= 599:  # set by the handler through `context`
            raise UserCodeFailure(processor.get_response_status_phrase() or _text(result), status)
        return _response(result, accept)

    def close(self) -> None:
        """Drop the model and the script's modules; what they held is freed once nothing refers to them."""
        self.model = self.module = self._transform = None
        if self.private is not None:
            self.private.close()

    def __str__(self) -> str:
        return self._description


def _pipeline(input_fn: Callable[..., Any], takes_model: bool, predict_fn: Callable[..., Any],
              output_fn: Callable[..., Any]) -> Callable[..., Any]:
    """The toolkit's default transform_fn: input_fn, predict_fn, output_fn."""

    def transform(model: Any, data: Any, content_type: str | None, accept: str) -> Any:
        features = input_fn(data, content_type, model) if takes_model else input_fn(data, content_type)
        return output_fn(predict_fn(features, model), accept)

    return transform


def _guarded(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, with any exception but a client's mistake turned into a UserCodeFailure naming `name`."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except ClientMistake:  # raised by AWS's default functions filling the script's gaps
            raise
        except Exception as e:
            status = getattr(e, "status_code", None)
            if not (isinstance(status, int) and 400 <= status <= 599):
                status = 500
            log.error("%s raised %s", name, type(e).__name__, exc_info=e)
            message = getattr(e, "message", None)
            reason = str(message) if isinstance(message, str) and message else f"{name} raised {_describe(e)}"
            raise UserCodeFailure(reason[:REASON_LIMIT], status) from None

    return call


def _load_step(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        log.error("%s raised %s", name, type(e).__name__, exc_info=e)
        raise ScriptError(f"{name} raised {_describe(e)}") from None


def _response(result: Any, accept: str) -> tuple[bytes, str]:
    """What Multi Model Server sends for a handler's result: bytes as they are, str as UTF-8, anything else
    as JSON; a (body, content_type) tuple sets the Content-Type, else it is the Accept header."""
    content_type: Any = accept
    if isinstance(result, tuple):
        result, content_type = result[0], result[1]
    if isinstance(result, (bytes, bytearray, memoryview)):
        body = bytes(result)
    elif isinstance(result, str):
        body = result.encode()
    else:
        try:
            body = json.dumps(result, indent=2).encode()
        except (TypeError, ValueError):
            log.error("the inference script returned a %s, which cannot be sent", type(result).__name__)
            raise UserCodeFailure(f"the inference script returned a {type(result).__module__}."
                                  f"{type(result).__name__}: return bytes, str or a JSON-serialisable value "
                                  "(or a (body, content_type) tuple)") from None
    return body, str(content_type or accept)


def _text(result: Any) -> str:
    if isinstance(result, tuple) and result:
        result = result[0]
    if isinstance(result, (bytes, bytearray)):
        return bytes(result).decode("utf-8", "replace")[:REASON_LIMIT]
    return str(result)[:REASON_LIMIT]


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__)[:REASON_LIMIT]


def _parameter_count(fn: Callable[..., Any]) -> int:
    return len(inspect.signature(fn).parameters)


def _expected_arity(name: str, fn: Callable[..., Any]) -> int:
    """Arguments the contract passes before `context`: one more for an input_fn that takes `model`."""
    if name == "input_fn" and "model" in inspect.signature(fn).parameters:
        return 3
    return ARITY[name]


def _signature_text(name: str, fn: Callable[..., Any]) -> str:
    return {
        "model_fn": "model_dir", "input_fn": "request_body, content_type", "predict_fn": "data, model",
        "output_fn": "prediction, accept", "transform_fn": "model, request_body, content_type, accept",
        "pre_model_fn": "model_dir", "model_warmup_fn": "model_dir, model",
    }[name] + (", model" if _expected_arity(name, fn) == 3 and name == "input_fn" else "")
