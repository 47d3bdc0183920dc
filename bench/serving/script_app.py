"""The bare stack around a user's inference script: a Flask view that calls the script's `transform_fn`.

bench/serve_bench.py --mode aws runs it as `gunicorn -w N script_app:app` with gunicorn's default settings, beside
our `serve` and AWS's stack: what gunicorn and Flask with nothing else around the same script reach on the
machine at hand. The script is $SCRIPT_APP_MODEL_DIR/code/$SAGEMAKER_PROGRAM; each worker runs its `model_fn`
once, at import.
"""

import importlib.util
import os

from flask import Flask, Response, request

_model_dir = os.environ["SCRIPT_APP_MODEL_DIR"]
_spec = importlib.util.spec_from_file_location(
    "inference", os.path.join(_model_dir, "code", os.environ["SAGEMAKER_PROGRAM"]))
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)
_model = _script.model_fn(_model_dir)

app = Flask(__name__)


@app.post("/invocations")
def invocations() -> Response:
    answer, content_type = _script.transform_fn(_model, request.get_data(), request.content_type,
                                                request.headers.get("Accept"))
    return Response(answer, content_type=content_type)
