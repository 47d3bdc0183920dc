"""The Flask app under the module name SageMaker's BYOC examples use (`gunicorn 'predictor:create_app()'`
serves it with gunicorn's own settings); `serve` builds the same app in each worker (mxnet_byoc/serve/server.py)."""

from mxnet_byoc.serve.app import create_app

__all__ = ["create_app"]
