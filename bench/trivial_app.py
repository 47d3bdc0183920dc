"""A baseline of the serving benchmark: a Flask endpoint that reads the body and answers a constant.

`python bench/trivial_app.py` runs it under `serve`'s own gunicorn application and settings, so that it
differs from `serve` only in the work per request.
"""

from flask import Flask, Response, request

from mxnet_byoc.serve import server, settings

app = Flask(__name__)
_ANSWER = b'{"predictions":[{"label":0}]}'


@app.post("/invocations")
def invocations() -> Response:
    request.get_data()
    return Response(_ANSWER, mimetype="application/json")


class UnderServeSettings(server.Application):
    def load(self) -> Flask:
        return app


if __name__ == "__main__":
    UnderServeSettings(settings.from_env()).run()
