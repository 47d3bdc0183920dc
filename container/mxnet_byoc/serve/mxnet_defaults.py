"""AWS's default MXNet inference handlers (sagemaker-mxnet-inference-toolkit 1.5), for any model in MXNet's
layout and for the gaps a user's inference script leaves.

What AWS's handlers do, and what these do the same way:
- model: `model-symbol.json` + `model-0000.params` bound as a Module for a batch of one (the first axis of
  `model-shapes.json` is replaced by 1), label inputs left unbound;
- request: JSON (a nested list), CSV (rows of numbers) or NPY, read into numpy and cast to float32; the
  request's rows run through the network one at a time and the outputs are concatenated;
- response: the output as a nested list of Python floats (`asnumpy().tolist()`) written as JSON
  (`json.dumps`), CSV (`numpy.savetxt(fmt="%s")`) or NPY (`numpy.save` of that list, so float64), the first
  type of `Accept` that the handler offers; `*/*` or none means SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT.
- Modules take and answer JSON, CSV and NPY; Gluon blocks JSON and NPY (no CSV), whole requests at once.

Where they differ, on purpose: a client's mistake is a 4xx with a reason (AWS answers 500): 415 for a
Content-Type the handler does not read, 406 for an Accept it cannot answer, 400 for a malformed body or
one whose size does not fit the input; JSON and NPY bodies are reshaped to the input's shape as CSV bodies
are (AWS feeds them as sent, which fails for other shapes, or gives the same answer for networks that
flatten their input); `.npy` bodies are never unpickled; the device is the GPU when there is one (AWS:
always the CPU). Without any user code the network runs through MXNet's C predict API (rawnet.py), with
the same numbers; the Module is built only for user code that receives it.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .. import modeldir
from . import codecs, rawnet
from .device import Device
from .handler import require_default_accept
from .http_errors import BadRequest, NotAcceptable, UnsupportedMediaType
from .mediatypes import CSV, JSON, NPY, media_type

MODULE_TYPES = (JSON, CSV, NPY)  # what AWS's Module handlers read and write
GLUON_TYPES = (JSON, NPY)  # what AWS's Gluon block handlers read and write
ANY_TYPES = (JSON, CSV, NPY)  # sagemaker-inference's own decoder and encoder, for models of other kinds
LAYOUT_FILES = (modeldir.SYMBOL_FILE, modeldir.PARAMS_FILE, modeldir.SHAPES_FILE)


def in_mxnet_layout(model_dir: Path) -> bool:
    """The three files AWS's default model_fn loads are all there."""
    return not missing_layout_files(model_dir)


def missing_layout_files(model_dir: Path) -> list[str]:
    return [name for name in LAYOUT_FILES if not (Path(model_dir) / name).is_file()]


# ---- request bodies ---------------------------------------------------------------------------------

def decode(body: bytes | str, content_type: str | None, offered: tuple[str, ...]) -> np.ndarray:
    """The body as a numpy array (not yet cast), for one of the `offered` content types."""
    kind = media_type(content_type)
    if kind not in offered:
        given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise UnsupportedMediaType(f"{given} is not read by the default handlers; send one of {', '.join(offered)}, "
                                   "or define input_fn in your inference script")
    if not body:
        raise BadRequest(f"the {kind} body is empty")
    try:
        if kind == JSON:
            data = orjson.loads(body)
            with warnings.catch_warnings():  # numpy 1.23 warns on lists of different lengths; 1.24 raises
                warnings.simplefilter("error", np.VisibleDeprecationWarning)
                return np.array(data)
        if kind == CSV:
            text = body if isinstance(body, str) else codecs.utf8_text(body, kind)
            return np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=1)
        return np.load(io.BytesIO(body), allow_pickle=False)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"the application/json body is not valid JSON: {e}") from None
    except np.VisibleDeprecationWarning:
        raise BadRequest(f"the {kind} body must hold numbers in equal-length lists") from None
    except (ValueError, EOFError, OSError, SyntaxError) as e:  # numpy's readers on malformed input
        reason = str(e).replace("allow_pickle=False", "unpickling refused") or type(e).__name__
        raise BadRequest(f"the {kind} body is not {_WHAT[kind]}: {reason}") from None


_WHAT = {JSON: "a nested list of numbers", CSV: "rows of comma-separated numbers", NPY: "a .npy array"}


def numbers(array: np.ndarray, kind: str) -> np.ndarray:
    """float32, as mxnet.nd.array casts a numpy array; anything but numbers is the client's mistake."""
    if array.dtype.kind not in "biuf":
        what = "lists of different lengths" if array.dtype == object else f"values of type {array.dtype}"
        raise BadRequest(f"the {kind} body must hold numbers in equal-length lists; it holds {what}")
    return np.ascontiguousarray(array, dtype=np.float32)


def rows_for(array: np.ndarray, input_shape: tuple[int, ...], kind: str) -> np.ndarray:
    """float32 rows shaped like the input without its batch axis: (-1, *input_shape[1:]), as AWS reshapes CSV."""
    row_shape = tuple(input_shape[1:])
    per_row = math.prod(row_shape)
    if array.size == 0 or array.size % per_row:
        raise BadRequest(f"the {kind} body holds {array.size} values (shape {list(array.shape)}); the model takes "
                         f"rows of shape {list(row_shape)}, {per_row} values each")
    return numbers(array, kind).reshape(-1, *row_shape)


# ---- response bodies --------------------------------------------------------------------------------

def negotiate(accept: str | None, offered: tuple[str, ...], default: str) -> str:
    """The `offered` type `accept` prefers (the first listed among equal q values, as AWS picks the first);
    `*/*` or no header means `default`, SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT."""
    try:
        kind = codecs.negotiate(accept.strip() if accept else None, default, offered)
    except NotAcceptable:
        kind = ""
    if kind not in offered:
        raise NotAcceptable(f"Accept {accept or default!r}: the default handlers answer {', '.join(offered)}; "
                            "define output_fn in your inference script for other types")
    return kind


def encode(prediction: Any, kind: str) -> bytes:
    """`prediction` as AWS's encoders write it. MXNet arrays go through `asnumpy().tolist()` first, as AWS's
    MXNet handlers do (so NPY answers are float64); numpy arrays and lists are written as they are."""
    if hasattr(prediction, "asnumpy"):
        prediction = prediction.asnumpy().tolist()
    if kind == JSON:
        return json.dumps(prediction, default=_tolist).encode()
    buffer = io.BytesIO()
    if kind == NPY:
        np.save(buffer, prediction)
        return buffer.getvalue()
    text = io.StringIO()
    try:
        np.savetxt(text, prediction, delimiter=",", fmt="%s")
    except ValueError as e:  # numpy writes 1-D and 2-D arrays only
        raise NotAcceptable(f"the prediction cannot be written as text/csv ({e}); ask for "
                            f"{JSON} or {NPY}") from None
    return text.getvalue().encode()


def _tolist(value: Any) -> Any:
    if hasattr(value, "asnumpy"):
        return value.asnumpy().tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# ---- the handler for a model without any user code --------------------------------------------------

class DefaultHandler:
    """A model in MXNet's layout with no user functions at all: AWS's Module handlers, end to end."""

    def __init__(self, network: rawnet.Network, default_accept: str = JSON):
        self.network = network
        self.default_accept = default_accept

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        kind = negotiate(accept, MODULE_TYPES, self.default_accept)
        array = decode(body, content_type, MODULE_TYPES)
        rows = rows_for(array, self.network.input_shape, media_type(content_type))
        return encode(self.network.forward(rows).tolist(), kind), kind

    def close(self) -> None:
        self.network.close()

    def __str__(self) -> str:
        network = self.network
        return (f"AWS's default MXNet handlers: input {network.input_name} {list(network.input_shape)}, output "
                f"{list(network.output_shape)} per row, on {network.device}")


def load_default(model_dir: Path, device: Device, default_accept: str = JSON) -> DefaultHandler:
    """The network of `model_dir` in MXNet's C predict API, run once on zeros before it serves."""
    require_default_accept(default_accept, MODULE_TYPES, "AWS's default MXNet handlers answer",
                           "; define output_fn in an inference script (code/) for other types")
    missing = missing_layout_files(model_dir)
    if missing:
        raise modeldir.ModelDirError(f"{', '.join(missing)} missing in {model_dir}: the default handlers load "
                                     f"MXNet's layout ({', '.join(LAYOUT_FILES)})")
    network = rawnet.Network(model_dir, device)
    network.forward(np.zeros(network.input_shape, dtype=np.float32))
    return DefaultHandler(network, default_accept)


# ---- the defaults behind a user's inference script (the mxnet package imported) ---------------------

def default_model_fn(model_dir: str | Path, device: Device) -> Any:
    """AWS's default model_fn: MXNet's layout bound as a Module for a batch of one."""
    import mxnet as mx

    model_dir = Path(model_dir)
    missing = missing_layout_files(model_dir)
    if missing:
        raise modeldir.ModelDirError(
            f"the default model_fn loads MXNet's layout ({', '.join(LAYOUT_FILES)}) and {', '.join(missing)} "
            f"is missing in {model_dir}: define model_fn(model_dir) in your inference script to load your model")
    shapes = rawnet.read_data_shapes(model_dir)
    symbol, args, aux = mx.model.load_checkpoint(str(model_dir / modeldir.PREFIX), modeldir.EPOCH)
    module = mx.mod.Module(symbol=symbol, context=device.mx_context(), data_names=[n for n, _ in shapes],
                           label_names=None)
    module.bind(for_training=False, data_shapes=shapes)
    module.set_params(args, aux, allow_missing=True)
    return module


class ModuleDefaults:
    """input_fn, predict_fn and output_fn for a Module (AWS's DefaultModuleInferenceHandler)."""

    content_types = MODULE_TYPES
    input_takes_model = True

    def __init__(self, device: Device, default_accept: str = JSON):
        self.device, self.default_accept = device, default_accept

    def input_fn(self, body: bytes | str, content_type: str, model: Any) -> Any:
        import mxnet as mx

        [(_, shape)] = model.data_shapes  # one input, as AWS's handler requires
        kind = media_type(content_type)
        rows = rows_for(decode(body, content_type, self.content_types), tuple(shape), kind)
        batch = int(shape[0])
        data = mx.io.NDArrayIter(mx.nd.array(rows, ctx=self.device.mx_context()), batch_size=batch,
                                 last_batch_handle="pad")
        pad = 0 if batch == 1 else (-len(rows)) % batch
        if pad:  # Module.predict drops the last `getpad()` rows of the padded last batch
            data.getpad = lambda: pad
        return data

    def predict_fn(self, data: Any, model: Any) -> Any:
        return model.predict(data)

    def output_fn(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        kind = negotiate(accept, self.content_types, self.default_accept)
        return encode(prediction, kind), kind


class GluonDefaults(ModuleDefaults):
    """input_fn, predict_fn and output_fn for a Gluon block (AWS's DefaultGluonBlockInferenceHandler)."""

    content_types = GLUON_TYPES
    input_takes_model = False

    def input_fn(self, body: bytes | str, content_type: str) -> Any:  # type: ignore[override]
        import mxnet as mx

        array = numbers(decode(body, content_type, self.content_types), media_type(content_type))
        return mx.nd.array(array, ctx=self.device.mx_context())

    def predict_fn(self, data: Any, model: Any) -> Any:
        return model(data)


class GenericDefaults(ModuleDefaults):
    """For a model of any other kind (sagemaker-inference's own defaults): JSON, CSV and NPY to numpy and
    back; there is no default predict_fn."""

    content_types = ANY_TYPES
    input_takes_model = False
    predict_fn = None  # type: ignore[assignment]

    def input_fn(self, body: bytes | str, content_type: str) -> Any:  # type: ignore[override]
        return decode(body, content_type, self.content_types)


def defaults_for(model: Any, device: Device, default_accept: str = JSON) -> ModuleDefaults:
    """AWS's choice of default handlers by the kind of model that model_fn returned."""
    import sys

    mx = sys.modules.get("mxnet")  # a model can be a Module or a block only if something imported mxnet
    if mx is not None and isinstance(model, mx.module.BaseModule):
        return ModuleDefaults(device, default_accept)
    if mx is not None and isinstance(model, mx.gluon.Block):
        return GluonDefaults(device, default_accept)
    return GenericDefaults(device, default_accept)
