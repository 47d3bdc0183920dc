"""Multi-model endpoints against AWS's stack, on the same models and machine, in the same run.

AWS's stack is the one the `aws` mode runs (Multi Model Server 1.1.11, sagemaker-mxnet-inference 1.5.5,
sagemaker-inference 1.6.1, Debian's Java), started as AWS's MXNet container starts it with SAGEMAKER_MULTI_MODEL=true:
the toolkit's multi-model properties (one worker process per model, AWS's default; model_store=/) and its handler
service. That service imports SAGEMAKER_PROGRAM's module (`inference`) from the worker's path, which in a
multi-model container holds neither the model's code/ nor anything else, so without help it serves no model at
all; given an empty inference.py on PYTHONPATH (as the `aws` mode gives it empty.py), it serves every model with
its default handlers. Ours is `serve` with SAGEMAKER_MULTI_MODEL=true and --workers workers. Both get the same
--mme-models copies of one network in MXNet's layout (the trained mlp without our metadata.json, so AWS's default
handlers serve it in both), loaded with SageMaker's own request, POST /models {"model_name", "url"}, and invoked at
/models/<name>/invoke with the same JSON body (answers compared byte for byte first).

Figures, each ours against AWS's:
- load to first answer: from POST /models to the first 200 from the model, median over every model (loads in
  alternation: a model on ours, the same on AWS's);
- memory per loaded model: PSS of the whole process tree with every model loaded, less before any load, over the
  number of models;
- requests/s across all the models at once: wrk with each request to the next model in turn, at concurrency 8 and
  32, the stacks in alternation, --rounds runs of --duration s.
Then, without a figure: one model alone under the same load, PSS after unloading every model, and a model with
its own code/ (inference.py and a helper module) on each stack.
Targets: load to first answer and memory per model at most half of AWS's, requests/s at least twice.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from devkit.servers import Server
from devkit.waiting import wait_until
from figures import Figure, at_least

from . import aws
from .rig import WRK_SCRIPT, Bench, ensure_program, median, pair_ratio, post, wrk_result

CONCURRENCIES = (8, 32)
TARGET = 2.0

# The multi-model properties of sagemaker-inference 1.6.1 (etc/mme-mms.properties, SAGEMAKER_HANDLER set to the
# MXNet handler service), then what its model_server module appends; one address for inference and management, as
# SageMaker reaches both on one port.
MME_CONFIG = """\
enable_envvars_config=true
model_store=/
default_service_handler=sagemaker_mxnet_serving_container.handler_service:handle
default_workers_per_model=1
async_logging=true
decode_input_request=false
default_response_timeout=60
inference_address=http://127.0.0.1:{port}
management_address=http://127.0.0.1:{port}
vmargs=-XX:-UseContainerSupport
"""

# wrk: each request to the next model in turn ($BENCH_MODELS, comma-separated), and rig's one BENCH_RESULT line.
WRK_ROTATE = """
local paths = {}
for name in string.gmatch(os.getenv("BENCH_MODELS"), "[^,]+") do
  table.insert(paths, "/models/" .. name .. "/invoke")
end
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
local headers = {["Content-Type"] = "application/json", ["Accept"] = "application/json"}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("POST", paths[i], headers, body)
end
""" + WRK_SCRIPT[WRK_SCRIPT.index("done = function"):]

CODE_SCRIPT = """\
import helper


def model_fn(model_dir):
    return helper.answer


def transform_fn(answer, body, content_type, accept):
    return answer(body), "application/json"
"""
HELPER = "def answer(body):\n    return '{\"bytes\": %d}' % len(body)\n"


class AwsMultiModelServer(aws.AwsServer):
    """Multi Model Server as AWS's MXNet container runs it for a multi-model endpoint: no model at start."""

    def __init__(self, venv: Path, work: Path, log: Path):  # not AwsServer's: that one starts with a model
        self.port, self.workers = aws.low_free_port(), 0
        empty = work / "aws-empty-module"
        empty.mkdir(exist_ok=True)
        (empty / "inference.py").write_text("")
        self.start(venv, work, log, MME_CONFIG.format(port=self.port),
                   {"SAGEMAKER_MULTI_MODEL": "true", "PYTHONPATH": str(empty),
                    "SAGEMAKER_HANDLER": "sagemaker_mxnet_serving_container.handler_service"}, [])


def run(bench: Bench) -> list[Figure]:
    args = bench.args
    java = ensure_program("java", "default-jre-headless")
    venv = aws.ensure_aws_stack(args.aws_venv)
    source = bench.model_dir()
    names = [f"model-{i:02d}" for i in range(args.mme_models)]
    models = bench.work / "mme-models"
    for name in names:
        shutil.copytree(source, models / name / "model", ignore=shutil.ignore_patterns("metadata.json"))
    images, _ = bench.test_set
    pixels = (images[0][None, None] / 255).round(4).tolist()  # one image, (1, 1, 28, 28), as AWS's handlers take it
    body = bench.body("mme-one.json", json.dumps(pixels).encode())
    script = bench.body("mme-rotate.lua", WRK_ROTATE.encode())
    print(f"{len(names)} copies of {source} (MXNet's layout); ours: {args.workers} workers; AWS's: a worker per "
          f"model; {args.rounds} rounds of {args.duration} s per figure; {len(os.sched_getaffinity(0))} CPUs; {java}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    (bench.work / "mme-ours").mkdir()
    ours = Server(bench.work / "mme-ours", bench.work / "mme-ours.log", SAGEMAKER_MULTI_MODEL="true",
                  SAGEMAKER_MODEL_SERVER_WORKERS=str(args.workers))
    theirs = AwsMultiModelServer(venv, bench.work, bench.work / "mme-aws.log")
    servers: list[Server] = [ours, theirs]
    try:
        for server in servers:
            server.wait_ready(180)
        wait_until(lambda: ours.output().count("worker ready with the") >= args.workers, 120,
                   "every worker of ours ready", details=ours.tail)
        idle = [server.pss_kib() for server in servers]
        seconds: list[list[float]] = [[], []]
        for name in names:
            answers = []
            for i, server in enumerate(servers):
                took, answer = load_to_answer(server, name, models / name / "model", body.read_bytes())
                seconds[i].append(took)
                answers.append(answer)
            if answers[0] != answers[1]:
                raise SystemExit(f"{name}: the stacks answer differently: {answers[0][:100]!r}, {answers[1][:100]!r}")
        loaded = [server.pss_kib() for server in servers]
        per_model = [(after - before) / len(names) / 1024 for before, after in zip(idle, loaded)]
        print(f"  answers identical on every model ({answers[0][:60]!r}...)")
        print(f"  load to first answer, median (min-max) s: ours {statistics.median(seconds[0]):.3f} "
              f"({min(seconds[0]):.3f}-{max(seconds[0]):.3f}), AWS's {statistics.median(seconds[1]):.3f} "
              f"({min(seconds[1]):.3f}-{max(seconds[1]):.3f})")
        print(f"  PSS of the whole server, MiB: idle ours {idle[0] / 1024:.0f}, AWS's {idle[1] / 1024:.0f}; with "
              f"{len(names)} models ours {loaded[0] / 1024:.0f}, AWS's {loaded[1] / 1024:.0f}; per model ours "
              f"{per_model[0]:.1f}, AWS's {per_model[1]:.1f}", flush=True)
        runs = alternate(bench, servers, script, body, names)
        one = alternate(bench, servers, script, body, names[:1], (8,))
        print(f"  one model alone at concurrency 8: ours {median(one[8][0], 'rps'):.0f} req/s (every worker serves "
              f"it), AWS's {median(one[8][1], 'rps'):.0f} (the model's one worker)")
        for server in servers:
            for name in names:
                status, answer = delete(server, name)
                if status != 200:
                    raise SystemExit(f"unloading {name} answered {status}: {answer[:300]!r}")
        emptied = [server.pss_kib() for server in servers]
        print(f"  PSS after unloading every model, MiB: ours {emptied[0] / 1024:.0f}, AWS's {emptied[1] / 1024:.0f}",
              flush=True)
        code_model(bench, servers, models)
    finally:
        bench.stop(servers)
    figures = [
        at_least("serving.mme.load", "multi-model: POST /models to the model's first answer, AWS's over ours",
                 f"{statistics.median(seconds[0]):.3f} s", f"AWS's {statistics.median(seconds[1]):.3f} s",
                 statistics.median(seconds[1]) / statistics.median(seconds[0]), TARGET),
        at_least("serving.mme.memory", f"multi-model: memory per loaded model ({len(names)} loaded), AWS's over ours",
                 f"{per_model[0]:.1f} MiB", f"AWS's {per_model[1]:.1f} MiB", per_model[1] / per_model[0], TARGET),
    ]
    print(f"{'concurrency':>11} {'ours req/s':>10} {'p50 ms':>7} {'CPU us':>7} | {'AWS req/s':>9} {'p50 ms':>7} "
          f"{'CPU us':>7} | {'ratio':>5}")
    for c, (a, b) in runs.items():
        ratio = pair_ratio(a, b)
        print(f"{c:>11} {median(a, 'rps'):>10.0f} {median(a, 'p50_ms'):>7.2f} {median(a, 'cpu_us'):>7.0f} | "
              f"{median(b, 'rps'):>9.0f} {median(b, 'p50_ms'):>7.2f} {median(b, 'cpu_us'):>7.0f} | {ratio:>5.2f}")
        figures.append(at_least(f"serving.mme.c{c}", f"multi-model: requests/s across {len(names)} models at "
                                f"concurrency {c}", f"{median(a, 'rps'):,.0f} req/s", f"AWS's {median(b, 'rps'):,.0f} "
                                "req/s", ratio, TARGET))
    return figures


def load_to_answer(server: Server, name: str, folder: Path, body: bytes, limit: float = 300) -> tuple[float, bytes]:
    """Seconds from POST /models to the model's first 200, and that answer."""
    started = time.perf_counter()
    status, answer = post_json(server, "/models", {"model_name": name, "url": str(folder)}, limit)
    if status != 200:
        raise SystemExit(f"loading {name} answered {status}: {answer[:500]!r}\n{server.tail()}")
    deadline = started + limit
    while time.perf_counter() < deadline:
        status, answer = post(server.url(f"/models/{name}/invoke"), body, "application/json", 60)
        if status == 200:
            return time.perf_counter() - started, answer
    raise SystemExit(f"{name}: no answer within {limit:g} s after its load\n{server.tail()}")


def post_json(server: Server, path: str, document: object, timeout: float) -> tuple[int, bytes]:
    return post(server.url(path), json.dumps(document).encode(), "application/json", timeout)


def delete(server: Server, name: str) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url(f"/models/{name}"), method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def alternate(bench: Bench, servers: list[Server], script: Path, body: Path, names: list[str],
              concurrencies: tuple[int, ...] = CONCURRENCIES) -> dict[int, list[list[dict[str, float]]]]:
    """--rounds wrk runs per stack and concurrency, the stacks in alternation (the order reversed every round)."""
    runs: dict[int, list[list[dict[str, float]]]] = {c: [[], []] for c in concurrencies}
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_MODELS": ",".join(names)}
    for round_ in range(bench.args.rounds):
        for c in concurrencies:
            order = [0, 1] if round_ % 2 == 0 else [1, 0]
            for i in order:
                server = servers[i]
                cpu_before = server.cpu_seconds()
                result = subprocess.run([bench.wrk, "-t1", f"-c{c}", f"-d{bench.args.duration}s", "--timeout", "10s",
                                         "-s", str(script), server.url("/")], env=env, capture_output=True, text=True,
                                        check=True)
                requests, duration, p50, p99 = wrk_result(result.stdout)
                runs[c][i].append({"rps": requests / duration, "p50_ms": p50, "p99_ms": p99,
                                   "cpu_us": (server.cpu_seconds() - cpu_before) / requests * 1e6})
    return runs


def code_model(bench: Bench, servers: list[Server], models: Path) -> None:
    """A model with its own code/ on each stack: what each answers to its load and its invocation."""
    folder = models / "with-code" / "model"
    shutil.copytree(models / "model-00" / "model", folder)
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(CODE_SCRIPT)
    (folder / "code" / "helper.py").write_text(HELPER)
    print("  a model with code/inference.py and code/helper.py:")
    for label, server in zip(("ours", "AWS's"), servers):
        status, answer = post_json(server, "/models", {"model_name": "with-code", "url": str(folder)}, 300)
        line = f"    {label}: load {status} {answer[:160]!r}"
        if status == 200:
            status, answer = post(server.url("/models/with-code/invoke"), b"[1]", "application/json", 60)
            line += f"; invoke {status} {answer[:160]!r}"
        print(line, flush=True)

