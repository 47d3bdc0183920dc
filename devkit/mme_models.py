"""Models for multi-model endpoint tests and the bench: every kind one model folder can be, each model's answer
telling which model gave it. Making them imports MXNet (the project's .venv has it); serving them does not.

- built-in: the indicator model (score k = 20 x pixel k) with metadata.json, its class labels "<name>:<k>";
- default handlers: MXNet's layout without metadata.json, y = x0 + x1 + <index> (a FullyConnected of one output);
- code: the same layout with code/inference.py and code/helper.py, the helper's VALUE = <index> in each model
  (every model's modules have the same names), the request's custom attributes echoed.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("built-in", "default handlers", "code")
JSON = "application/json"

CODE_SCRIPT = """
    import json

    import helper


    def model_fn(model_dir):
        return helper.VALUE


    def transform_fn(value, body, content_type, accept, context):
        rows = json.loads(body)
        return json.dumps({"model": value, "sums": [sum(row) for row in rows],
                           "attributes": context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes")}), accept
"""


@dataclass(frozen=True)
class ZooModel:
    name: str
    folder: Path
    kind: str
    body: bytes
    content_type: str
    expected: Callable[[bytes], bool]  # whether an answer is this model's


def builtin_model(folder: Path, name: str) -> Path:
    import mxnet as mx

    from mxnet_byoc import modeldir

    weight = np.zeros((10, 784), dtype=np.float32)
    weight[np.arange(10), np.arange(10)] = 20
    scores = mx.sym.FullyConnected(mx.sym.flatten(mx.sym.var("data")), num_hidden=10, name="fc")
    params = {"fc_weight": mx.nd.array(weight), "fc_bias": mx.nd.zeros(10)}
    modeldir.save(scores, params, {}, folder, (1, 28, 28), [f"{name}:{k}" for k in range(10)], {})
    return folder


def affine_model(folder: Path, index: int) -> Path:
    """MXNet's layout, no metadata.json: y = x0 + x1 + index, input (1, 2)."""
    import mxnet as mx

    folder.mkdir(parents=True, exist_ok=True)
    symbol = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=1, name="fc")
    symbol.save(str(folder / "model-symbol.json"))
    mx.nd.save(str(folder / "model-0000.params"), {"arg:fc_weight": mx.nd.array([[1.0, 1.0]]),
                                                   "arg:fc_bias": mx.nd.array([float(index)])})
    (folder / "model-shapes.json").write_text(json.dumps([{"name": "data", "shape": [1, 2]}]))
    return folder


def code_model(folder: Path, index: int) -> Path:
    affine_model(folder, index)
    code = folder / "code"
    code.mkdir()
    (code / "inference.py").write_text(textwrap.dedent(CODE_SCRIPT))
    (code / "helper.py").write_text(f"VALUE = {index}\n")
    return folder


def image_body(label: int) -> bytes:
    image = np.zeros((28, 28), dtype=np.uint8)
    image.flat[label] = 255
    return json.dumps({"instances": [image.tolist()]}).encode()


def zoo(root: Path, count: int = 20) -> list[ZooModel]:
    """`count` models under `root`, the kinds in turn."""
    models = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        name = f"model-{index:02d}"
        folder = root / name / "model"
        if kind == "built-in":
            builtin_model(folder, name)
            label = index % 10
            models.append(ZooModel(name, folder, kind, image_body(label), JSON,
                                   lambda answer, n=name, k=label: json.loads(answer)["predictions"][0]["label"]
                                   == f"{n}:{k}"))
        elif kind == "default handlers":
            affine_model(folder, index)
            models.append(ZooModel(name, folder, kind, b"[[1, 2]]", JSON,
                                   lambda answer, i=index: json.loads(answer) == [[3.0 + i]]))
        else:
            code_model(folder, index)
            models.append(ZooModel(name, folder, kind, b"[[1, 2], [3, 4]]", JSON,
                                   lambda answer, i=index: json.loads(answer)["model"] == i
                                   and json.loads(answer)["sums"] == [3, 7]))
    return models
