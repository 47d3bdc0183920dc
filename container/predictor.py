"""The Flask app that `serve` runs, as SageMaker's BYOC samples name it: `create_app()` builds one per worker."""

from mxnet_byoc.serve.app import create_app

__all__ = ["create_app"]
