"""The plain endpoint of the serving benchmark: a Flask view that reads the body and answers a constant.

bench/serve_bench.py runs it as `gunicorn -w N trivial_app:app`, with gunicorn's default settings: what a
bare Python HTTP stack costs per request on the machine at hand.
"""

from flask import Flask, Response, request

app = Flask(__name__)
_ANSWER = b'{"predictions":[{"label":0}]}'


@app.post("/invocations")
def invocations() -> Response:
    request.get_data()
    return Response(_ANSWER, mimetype="application/json")
