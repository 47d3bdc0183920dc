"""Models and inference scripts for the script-mode serving tests (unit, integration and container). Training
and exporting import MXNet when called (the project's .venv has it).

- AWS's own test model for its default handlers (tests/resources/aws_default_handlers: `[[1, 2]]` ->
  `[[4.9999918937683105]]`);
- a regression trained here with MXNet's Module API: input (1, 2), `LinearRegressionOutput` head with its
  label input, MXNet's layout without our metadata.json;
- a small convolutional network exported from Gluon, input (1, 1, 8, 8), three outputs per image.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np

from . import project

RESOURCES = project.ROOT / "tests" / "resources"
AWS_MODEL = RESOURCES / "aws_default_handlers"
AWS_INPUT, AWS_ANSWER = [[1, 2]], b"[[4.9999918937683105]]"  # sagemaker-mxnet-inference-toolkit's pinned answer
REGRESSION = (3.0, -2.0, 0.5)  # y = 3 x0 - 2 x1 + 0.5


def copy_aws_model(model_dir: Path) -> Path:
    shutil.copytree(AWS_MODEL, model_dir, ignore=shutil.ignore_patterns("*.md"))
    return model_dir


def train_regression(model_dir: Path, seed: int = 0) -> Path:
    """y = 3 x0 - 2 x1 + 0.5 fitted by a Module (SGD, 30 epochs of 512 points), saved in MXNet's layout."""
    import mxnet as mx

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(512, 2)).astype(np.float32)
    w0, w1, b = REGRESSION
    y = (w0 * x[:, 0] + w1 * x[:, 1] + b).astype(np.float32).reshape(-1, 1)
    mx.random.seed(seed)
    data = mx.sym.var("data")
    output = mx.sym.LinearRegressionOutput(mx.sym.FullyConnected(data, num_hidden=1, name="fc"),
                                           mx.sym.var("lin_reg_label"), name="lro")
    train = mx.io.NDArrayIter(x, y, batch_size=32, shuffle=True, label_name="lin_reg_label")
    module = mx.mod.Module(output, data_names=["data"], label_names=["lin_reg_label"], context=mx.cpu())
    module.fit(train, num_epoch=30, optimizer="sgd", optimizer_params={"learning_rate": 0.1},
               initializer=mx.init.Normal(0.1), eval_metric="mse")
    model_dir.mkdir(parents=True, exist_ok=True)
    module.save_checkpoint(str(model_dir / "model"), 0)
    (model_dir / "model-shapes.json").write_text(json.dumps([{"name": "data", "shape": [1, 2]}]))
    return model_dir


def export_conv_model(model_dir: Path, seed: int = 0) -> Path:
    """Conv 4c3-relu-pool, Dense 3 with random weights; Gluon's export plus model-shapes.json."""
    import mxnet as mx

    mx.random.seed(seed)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(4, 3, activation="relu"), mx.gluon.nn.MaxPool2D(2), mx.gluon.nn.Dense(3))
    net.initialize(mx.init.Normal(0.5))
    net.hybridize()
    net(mx.nd.zeros((1, 1, 8, 8)))
    model_dir.mkdir(parents=True, exist_ok=True)
    net.export(str(model_dir / "model"), 0)
    (model_dir / "model-shapes.json").write_text(json.dumps([{"name": "data", "shape": [1, 1, 8, 8]}]))
    return model_dir


def write_script(folder: Path, text: str, name: str = "inference.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


# model_fn and transform_fn only, JSON in and out: any network in MXNet's layout, label inputs included.
TRANSFORM_SCRIPT = """
    import json
    import os

    import mxnet as mx


    def model_fn(model_dir):
        with open(os.path.join(model_dir, "model-shapes.json")) as f:
            [shape] = json.load(f)
        symbol, args, aux = mx.model.load_checkpoint(os.path.join(model_dir, "model"), 0)
        module = mx.mod.Module(symbol, data_names=[shape["name"]], label_names=None, context=mx.cpu())
        module.bind(data_shapes=[(shape["name"], shape["shape"])], for_training=False)
        module.set_params(args, aux, allow_missing=True)
        return module


    def transform_fn(module, data, input_content_type, output_content_type):
        rows = mx.io.NDArrayIter(mx.nd.array(json.loads(data)), batch_size=1)
        return json.dumps({"outputs": module.predict(rows).asnumpy().tolist()}), "application/json"
"""

# input_fn, predict_fn and output_fn, each with `context` (the toolkit's variant), and a model_fn of its own.
THREE_FUNCTIONS_SCRIPT = """
    import json

    import numpy as np


    class Doubler:
        def __init__(self, model_dir, gpu_id):
            self.model_dir, self.gpu_id = model_dir, gpu_id

        def __call__(self, rows):
            return 2 * rows


    def model_fn(model_dir, context):
        return Doubler(model_dir, context.system_properties["gpu_id"])


    def input_fn(request_body, content_type, context):
        assert isinstance(request_body, str), type(request_body)
        return np.array(json.loads(request_body)["values"], dtype=np.float64)


    def predict_fn(data, model, context):
        return {"doubled": model(data).tolist(), "gpu_id": model.gpu_id, "model_dir": model.model_dir}


    def output_fn(prediction, accept, context):
        return json.dumps(prediction), "application/vnd.doubled+json"
"""
