#!/usr/bin/env python3
"""The generated parts of README.md and docs/, each from its single source, between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`:
- hyperparameters (README): mxnet_byoc.train.hyperparameters' specs;
- request-types, response-types, errors and settings (README): the media types of mxnet_byoc.serve.mediatypes,
  the error classes of mxnet_byoc.serve.http_errors, the variables of mxnet_byoc.serve.settings (with their
  defaults) and the few other modules `serve` reads one from. Their names, statuses and defaults come from the
  code; what each means is written here, and a name the code gains without a meaning here stops the generation
  (and tests/unit/test_docs.py) until it is described;
- performance-summary (README) and performance (docs/performance.md): the benches' figures in bench/results/,
  which `make bench` (bench/run.py) writes.

    .venv/bin/python scripts/generated_docs.py            rewrite every part
    .venv/bin/python scripts/generated_docs.py --check    exit 1, naming the stale parts, when any is stale
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from mxnet_byoc import modeldir
from mxnet_byoc.serve import allocator, http_errors, mediatypes, selection, settings
from mxnet_byoc.train import hyperparameters

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHES = ("training", "horovod", "serving", "images")  # the order of docs/performance.md's sections
# README's Performance table: a few figures of the latest run, by key (bench/figures.py's Figure.key).
SUMMARY = ["training.cnn.accuracy", "training.throughput.cnn", "serving.one-image.cnn.c32", "serving.batch.cnn.uint8",
           "serving.startup.cnn.seconds", "serving.aws.transform_fn.c32", "serving.mme.c32", "serving.load.kills",
           "images.cpu.size"]


REQUEST_BODIES = {
    mediatypes.JSON: '`{"instances": [image, ...]}` (or `"inputs"`); an image is a 28x28 nested list, 784 flat values '
                     "or 1x28x28: any nesting of C\\*H\\*W numbers in row-major order",
    mediatypes.CSV: "one image per line, 784 comma-separated values; no header",
    mediatypes.NPY: "one array from `numpy.save`, (N, 28, 28), (N, 784), (N, 1, 28, 28) or one image (28, 28), (784,), "
                    "(1, 28, 28); any integer or float dtype; never unpickled",
    mediatypes.JSONLINES: 'one image per line (a JSON list as above, or `{"instances": [...]}`), for batch transform '
                          "with `SplitType=Line`",
    mediatypes.PNG: "one picture of a digit: any size, colour or grey, dark on light or light on dark",
    mediatypes.JPEG: "as `image/png`",
}
RESPONSE_BODIES = {
    mediatypes.JSON: '`{"predictions": [{"label": 7, "probabilities": [10 floats]}, ...]}`; also for `*/*`, '
                     "`application/*` or no `Accept`",
    mediatypes.JSONLINES: '`{"label": ..., "probabilities": [...]}` per line, in the order of the images '
                          "(`AssembleWith=Line`)",
    mediatypes.CSV: "one label per line",
}
ERRORS = {  # http_errors' classes an answer is made of
    "BadRequest": "a malformed body: invalid JSON, CSV or `.npy`, an unreadable picture, a wrong number of values "
                  "per image (the message gives the shapes expected), pixel values outside [0, 255], an empty body; a "
                  "request whose HTTP cannot be parsed",
    "NotAcceptable": "an `Accept` none of whose types can be answered (the message lists those that can)",
    "UnsupportedMediaType": "a missing or unsupported `Content-Type` (the message lists the supported ones)",
    "PayloadTooLarge": "a body above the payload limit (`SAGEMAKER_MAX_PAYLOAD_IN_MB`, a MB being 1,048,576 bytes), "
                       "chunked bodies counted as they arrive",
    "RequestTimeout": "the body stalled: nothing arrived for half of `SAGEMAKER_MODEL_SERVER_TIMEOUT` (under a "
                      "plain WSGI server; `serve`'s nginx closes such a connection without an answer, logged as 408)",
    "UserCodeFailure": "your inference code raised: the message names the function and the exception (an exception "
                       "with an integer `status_code` answers with that status); the traceback is in the log",
}
WHOSE = {"ClientMistake": "the client's mistake", "ServerLimit": "a limit of the server",
         "UserCodeFailure": "your code", "HttpError": "the server"}
OTHER_STATUSES = [
    ("404, 405", "the client's mistake", "an unknown path or method (a 405 lists the methods allowed in `Allow`)"),
    ("503", "the server", "no model loaded yet, or none usable: the reason, as `/ping` gives it"),
    ("502", "the server", "the worker serving the request died (killed, out of memory, or past "
     "`SAGEMAKER_MODEL_SERVER_TIMEOUT`): only that request is lost, the others wait for another worker"),
    ("504", "the server", "every worker stayed busy with other requests for twice `SAGEMAKER_MODEL_SERVER_TIMEOUT`"),
    ("409, 507", "the client's mistake, the server", "multi-model endpoints: a model name already loaded; too little "
     "memory left for another model ([docs/multi-model.md](docs/multi-model.md))"),
    ("500", "the server", "a fault of the server itself, running out of memory included: logged with its traceback; "
     "the answer names only its kind (`internal error (MemoryError)`); the worker goes on serving"),
]
SETTINGS = {  # variable: (its default, what it does); None: the default comes from the code
    settings.BIND_TO_PORT: (settings.DEFAULT_PORT, "the port to listen on"),
    settings.MODEL_SERVER_WORKERS: ("one per GPU, else one per CPU (affinity mask and cgroup quota)",
                                    "worker processes, each with its own copy of the model"),
    settings.MODEL_SERVER_TIMEOUT: (settings.DEFAULT_TIMEOUT_S, "seconds a request may take before its worker is "
                                    "restarted; half of it is how long a client may stall"),
    settings.MAX_PAYLOAD_IN_MB: (settings.DEFAULT_MAX_PAYLOAD_MB, f"the payload limit; batch transform sets it from "
                                 f"`MaxPayloadInMB` (0 means {settings.BATCH_MAX_PAYLOAD_MB})"),
    settings.BATCH_STRATEGY: (settings.BATCH_STRATEGIES[0], "`/execution-parameters` reports it as the API names it ("
                              + ", ".join(f"`{settings.BATCH_STRATEGY_NAMES[s]}`" for s in settings.BATCH_STRATEGIES)
                              + "), which SDK local mode takes when a transform names no strategy"),
    settings.DEFAULT_INVOCATIONS_ACCEPT: (mediatypes.JSON, "the response type for `*/*` or no `Accept`: any one type; "
                                          "a handler that can never answer it refuses to load, saying so"),
    settings.MULTI_MODEL: ("false", "`true`: a multi-model endpoint ([docs/multi-model.md](docs/multi-model.md), which "
                           "also lists the `MMS_*` settings of AWS's image that `serve` reads)"),
    settings.SERVE_HOST: (settings.DEFAULT_HOST, "the interface to listen on (the tests use `127.0.0.1`)"),
    settings.KEEP_ALIVE_S: (settings.DEFAULT_KEEP_ALIVE_S, "seconds an idle client connection stays open for its next "
                            "request; 0 closes every connection after its answer"),
    settings.MXNET_LIBRARY_PATH: ("the `mxnet` package's `libmxnet.so`", "another `libmxnet.so` to load"),
    settings.MXNET_ENGINE_TYPE: (settings.WORKER_ENV_DEFAULTS.get(settings.MXNET_ENGINE_TYPE),
                                 "MXNet's engine in the workers (set for them unless given)"),
    settings.OMP_NUM_THREADS: (settings.WORKER_ENV_DEFAULTS.get(settings.OMP_NUM_THREADS),
                               "OpenMP threads per worker (set for them unless given: the workers fill the CPUs)"),
    allocator.LD_PRELOAD: ("jemalloc (`libjemalloc.so.2`), where the machine has it", "`serve` starts itself again "
                           "once with it set, so that gunicorn and its workers allocate with jemalloc (nginx does "
                           "not); a value of yours, even an empty one (glibc's malloc), is kept"),
    modeldir.BASE_DIR: ("/opt/ml", "the model is read from its `model/` folder"),
    selection.PROGRAM: ("`inference.py`, when there is code", "your inference script's file name (script mode)"),
    selection.SUBMIT_DIRECTORY: ("/opt/ml/model/code", "where your inference code is: a folder, a tarball or an "
                                 "`s3://` tarball"),
}
ENVIRONMENT_NAME = re.compile(r"^(SAGEMAKER|MXNET|OMP)_[A-Z0-9_]+$")


def table(head: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def described(names: list[str], meanings: dict, where: str) -> None:
    missing = [name for name in names if name not in meanings]
    if missing:
        raise SystemExit(f"{where} has {', '.join(missing)}, which scripts/generated_docs.py does not describe")


def request_types() -> str:
    described(list(mediatypes.REQUEST_TYPES), REQUEST_BODIES, "mediatypes.REQUEST_TYPES")
    return table(["`Content-Type`", "body"], [[f"`{t}`", REQUEST_BODIES[t]] for t in mediatypes.REQUEST_TYPES])


def response_types() -> str:
    described(list(mediatypes.RESPONSE_TYPES), RESPONSE_BODIES, "mediatypes.RESPONSE_TYPES")
    return table(["`Accept`", "body"], [[f"`{t}`", RESPONSE_BODIES[t]] for t in mediatypes.RESPONSE_TYPES])


def errors() -> str:
    classes = [c for c in vars(http_errors).values() if isinstance(c, type) and issubclass(c, http_errors.HttpError)]
    answered = [c for c in classes if not any(other is not c and issubclass(other, c) for other in classes)]
    described([c.__name__ for c in answered], ERRORS, "mxnet_byoc.serve.http_errors")
    rows = [[c.status, WHOSE[next(b.__name__ for b in c.__mro__ if b.__name__ in WHOSE)], f"`{c.__name__}`: "
             + ERRORS[c.__name__]] for c in sorted(answered, key=lambda c: (c.status, c.__name__))]
    return table(["status", "whose doing", "when"], rows + [list(row) for row in OTHER_STATUSES])


def settings_table() -> str:
    names = [v for v in vars(settings).values() if isinstance(v, str) and ENVIRONMENT_NAME.match(v)]
    described(names, SETTINGS, "mxnet_byoc.serve.settings")
    rows = []
    for name, (default, meaning) in SETTINGS.items():
        shown = default if " " in str(default) else f"`{default}`"  # a value as code, a description as text
        rows.append([f"`{name}`", shown, meaning])
    return table(["variable", "default", "meaning"], rows)


def results() -> list[dict]:
    """Every section's record in bench/results/, in the benches' order and each bench's order of modes."""
    records = [json.loads(path.read_text()) for path in RESULTS.glob("*.json") if path.name != "latest.json"]
    return sorted(records, key=lambda r: (BENCHES.index(r["section"].split(".")[0]), r.get("position", 0)))


def figure_row(figure: dict) -> str:
    ratio = "" if figure["ratio"] is None else f"{figure['ratio']:.3f}"
    verdict = "" if not figure["target"] else ("met" if figure["met"] else "**NOT met**")
    cells = [figure["what"], figure["ours"], figure["baseline"], ratio, figure["target"], verdict]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


TABLE_HEAD = "| figure | ours | baseline | ratio | target | |\n| --- | --- | --- | --- | --- | --- |"


def performance() -> str:
    records = results()
    if not records:
        return "No bench has run yet: `make bench` writes this part."
    latest = json.loads((RESULTS / "latest.json").read_text()) if (RESULTS / "latest.json").exists() else {}
    failed = f"; failed: {', '.join(latest['failed'])}" if latest.get("failed") else ", none failed"
    lines = [f"The latest `make bench` ran {', '.join(latest.get('sections', [])) or 'nothing'}{failed}. A section it "
             "did not run keeps the figures of the run it names."]
    for record in records:
        machine = record["machine"]
        lines += ["", f"### {record['section']}", "",
                  f"`{record['command']}`, run {record['date']} on {machine['cpu']} ({machine['cores']} cores, "
                  f"{machine['memory']}); load average {machine['load']} at the start, {record['load_at_end']} at "
                  "the end."]
        if record["exit"]:
            lines += ["", f"**It failed** (exit {record['exit']}): the end of its output says why."]
        if record["figures"]:
            lines += ["", TABLE_HEAD, *map(figure_row, record["figures"])]
        output = record["output"] if not record["exit"] else record["output"][-6000:]
        lines += ["", "<details><summary>What it printed</summary>", "", "```text", output.rstrip("\n"), "```", "",
                  "</details>"]
    return "\n".join(lines)


def performance_summary() -> str:
    figures = {f["key"]: f for record in results() if not record["exit"] for f in record["figures"]}
    rows = [figure_row(figures[key]) for key in SUMMARY if key in figures]
    if not rows:
        return "No bench has run yet: `make bench` writes this table and [docs/performance.md](docs/performance.md)."
    return "\n".join([TABLE_HEAD, *rows, "", "From the latest `make bench`; every figure, with its machine, date and "
                      "how it is measured: [docs/performance.md](docs/performance.md)."])


PARTS: dict[str, tuple[str, Callable[[], str]]] = {
    "hyperparameters": ("README.md", hyperparameters.markdown_table),
    "request-types": ("README.md", request_types),
    "response-types": ("README.md", response_types),
    "errors": ("README.md", errors),
    "settings": ("README.md", settings_table),
    "performance-summary": ("README.md", performance_summary),
    "performance": ("docs/performance.md", performance),
}


def region(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {name}:begin -->\n.*?<!-- {name}:end -->", re.S)


def generated(name: str) -> str:
    """The part `name` as it belongs in its file, markers included."""
    return f"<!-- {name}:begin -->\n{PARTS[name][1]()}\n<!-- {name}:end -->"


def stale() -> list[str]:
    """The parts whose text differs from what their source gives (or whose markers are missing)."""
    found = []
    for name, (file, _) in PARTS.items():
        match = region(name).search((ROOT / file).read_text())
        if not match or match.group(0) != generated(name):
            found.append(f"{file}: {name}")
    return found


def write() -> None:
    for name, (file, _) in PARTS.items():
        path, text = ROOT / file, generated(name)
        old = path.read_text()
        if not region(name).search(old):
            sys.exit(f"{file} has no <!-- {name}:begin --> ... <!-- {name}:end --> markers")
        path.write_text(region(name).sub(lambda _, text=text: text, old))


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        parts = stale()
        if parts:
            sys.exit("stale generated parts (run scripts/gen-readme-tables.sh): " + "; ".join(parts))
    else:
        write()
