"""The baseline of the serving benchmark: a Flask endpoint that reads the body and answers a constant.

gunicorn runs it with the same config module as `serve`, so the two differ only in the work per request.
"""

from flask import Flask, Response, request

app = Flask(__name__)
_ANSWER = b'{"predictions":[{"label":0}]}'


@app.post("/invocations")
def invocations() -> Response:
    request.get_data()
    return Response(_ANSWER, mimetype="application/json")
