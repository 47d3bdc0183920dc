"""`python -m byoctl`: train, deploy, invoke, transform and delete with the image, on SageMaker or locally.

    python -m byoctl train --image URI --role ARN --channel training=s3://... --output-path s3://...
    python -m byoctl deploy --training-job NAME --endpoint-name mnist
    python -m byoctl invoke mnist digit.png
    python -m byoctl transform --training-job NAME --input s3://.../test.csv --output-path s3://...
    python -m byoctl delete mnist

Every subcommand takes --local to run through the SageMaker SDK's local mode (Docker on this machine,
file:// URIs). A local endpoint lives as long as its `deploy --local` process; `delete --local NAME`
stops that process, which removes the model, the endpoint and its containers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from byoctl import commands, leftovers, payloads, progress, sessions
from byoctl.commands import CommandError

ROLE_ENV = "SAGEMAKER_ROLE"


def _pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"{option} takes KEY=VALUE, not {item!r}")
        result[key] = value
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m byoctl", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--local", action="store_true",
                        help="SageMaker SDK local mode: Docker on this machine, file:// URIs, no AWS account")
    common.add_argument("--region", help="AWS region (default: AWS_REGION / AWS config)")
    common.add_argument("--profile", help="AWS profile")
    common.add_argument("--serving-port", type=int, help="local mode: port of the local endpoint (default 8080)")
    sub = parser.add_subparsers(dest="command", required=True)

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--image", help="image URI (default with --training-job: the job's image)")
    model.add_argument("--model-data", help="model.tar.gz URI (s3://, or file:// with --local)")
    model.add_argument("--training-job", help="take the model (and image) of this finished training job")
    model.add_argument("--role", default=os.environ.get(ROLE_ENV), help=f"execution role ARN (default: ${ROLE_ENV})")
    model.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment of the serving container")

    p = sub.add_parser("train", parents=[common], help="run a training job (generic Estimator)")
    p.add_argument("--image", required=True, help="image URI, e.g. from build_and_push.sh")
    p.add_argument("--role", default=os.environ.get(ROLE_ENV), help=f"execution role ARN (default: ${ROLE_ENV})")
    p.add_argument("--channel", action="append", metavar="NAME=URI", required=True,
                   help="an input channel, e.g. training=s3://bucket/mnist/train (repeat for test=...)")
    p.add_argument("--output-path", required=True, help="where model.tar.gz goes (s3://, or file:// with --local)")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a hyperparameter (repeat)")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--volume-size", type=int, default=30, help="GB of disk per instance")
    p.add_argument("--max-run", type=int, default=24 * 3600, help="seconds before SageMaker stops the job")
    p.add_argument("--spot", action="store_true", help="managed spot training")
    p.add_argument("--max-wait", type=int, help="spot: seconds to wait for capacity plus run (default 2 x max-run)")
    p.add_argument("--checkpoint-s3-uri", help="spot: checkpoints synced from /opt/ml/checkpoints, restored on restart")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment of the training container")
    p.add_argument("--job-name")
    p.add_argument("--no-wait", action="store_true", help="start the job and return")
    p.add_argument("--logs", action="store_true", help="print every log line, not only the metrics")
    p.add_argument("--poll", type=float, default=15.0, help="seconds between status checks")

    p = sub.add_parser("status", parents=[common], help="a training job's status and final metrics")
    p.add_argument("job_name")

    p = sub.add_parser("deploy", parents=[common, model], help="create a model, endpoint config and endpoint")
    p.add_argument("--endpoint-name", help="name of the endpoint, its config and model (default: generated)")
    p.add_argument("--instance-type", default="ml.m5.large")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--no-wait", action="store_true", help="return before the endpoint is InService")
    p.add_argument("--poll", type=float, default=30.0)

    p = sub.add_parser("invoke", parents=[common], help="send a PNG/JPEG, .npy, JSON, JSON lines or CSV file")
    p.add_argument("endpoint_name")
    p.add_argument("file", type=Path)
    p.add_argument("--content-type", help="default: from the file's extension")
    p.add_argument("--accept", default="application/json", help="application/json, application/jsonlines or text/csv")

    p = sub.add_parser("transform", parents=[common, model], help="run a batch transform job")
    p.add_argument("--input", required=True, help="an input file or prefix (s3://, or file:// with --local)")
    p.add_argument("--output-path", required=True)
    p.add_argument("--model-name", help="use this existing model instead of creating one")
    p.add_argument("--content-type", default="text/csv")
    p.add_argument("--split-type", default="Line", choices=("Line", "None", "RecordIO", "TFRecord"))
    p.add_argument("--accept", default="text/csv")
    p.add_argument("--assemble-with", default="Line", choices=("Line", "None"))
    p.add_argument("--strategy", default="MultiRecord", choices=("MultiRecord", "SingleRecord"))
    p.add_argument("--max-payload", type=int, default=6, help="MB per request (at most 100)")
    p.add_argument("--instance-type", default="ml.m5.large")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--job-name")
    p.add_argument("--keep-model", action="store_true", help="keep the model created for the job")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--poll", type=float, default=30.0)

    p = sub.add_parser("delete", parents=[common], help="delete an endpoint with its config and model, or a model")
    p.add_argument("endpoint_name", nargs="?")
    p.add_argument("--model", action="append", default=[], help="a model to delete (repeat)")
    return parser


def _source(args: argparse.Namespace) -> commands.ModelSource:
    if args.model_data and args.training_job:
        raise CommandError("give --model-data or --training-job, not both")
    return commands.ModelSource(model_data=args.model_data, training_job=args.training_job, image=args.image,
                                role=args.role, environment=_pairs(args.env, "--env"))


def run(args: argparse.Namespace, clients: sessions.Clients) -> int:
    out = sys.stdout
    if args.command == "train":
        commands.train(clients, commands.TrainRequest(
            image=args.image, role=args.role, channels=_pairs(args.channel, "--channel"),
            output_path=args.output_path, hyperparameters=_pairs(args.hp, "--hp"),
            instance_type=args.instance_type, instance_count=args.instance_count, volume_size=args.volume_size,
            max_run=args.max_run, spot=args.spot, max_wait=args.max_wait, checkpoint_s3_uri=args.checkpoint_s3_uri,
            environment=_pairs(args.env, "--env"), job_name=args.job_name, wait=not args.no_wait,
            echo_logs=args.logs, poll_s=args.poll), out)
    elif args.command == "status":
        commands.describe_training(clients, args.job_name, out)
    elif args.command == "deploy":
        name = args.endpoint_name or commands.job_name("mxnet-byoc")
        if clients.local:
            return _deploy_local(clients, args, name)
        commands.deploy(clients, _source(args), name, args.instance_type, args.instance_count,
                        wait=not args.no_wait, poll_s=args.poll, out=out)
        print(f"invoke it with: python -m byoctl invoke {name} FILE; remove it with: python -m byoctl delete {name}")
    elif args.command == "invoke":
        body, content_type = payloads.read(args.file, args.content_type)
        answer = commands.invoke(clients, args.endpoint_name, body, content_type, args.accept)
        print(commands.pretty(answer))
    elif args.command == "transform":
        commands.transform(clients, commands.TransformRequest(
            source=_source(args), input_uri=args.input, output_path=args.output_path,
            content_type=args.content_type, split_type=args.split_type, accept=args.accept,
            assemble_with=args.assemble_with, instance_type=args.instance_type,
            instance_count=args.instance_count, max_payload_mb=args.max_payload, strategy=args.strategy,
            job_name=args.job_name, model_name=args.model_name, keep_model=args.keep_model,
            wait=not args.no_wait, poll_s=args.poll), out)
    elif args.command == "delete":
        if not args.endpoint_name and not args.model:
            raise CommandError("name an endpoint, or pass --model NAME")
        if args.endpoint_name:
            if clients.local:
                _stop_local_endpoint(args.endpoint_name)
            else:
                commands.delete_endpoint(clients, args.endpoint_name, out)
        for model in args.model:
            if clients.local:
                raise CommandError("local models live in the process that created them: nothing to delete")
            commands.delete_model(clients, model, out)
    return 0


# --- local endpoints: one foreground process each -----------------------------------------------


def local_pid_file(endpoint_name: str) -> Path:
    return Path(tempfile.gettempdir()) / "byoctl-local" / f"{endpoint_name}.pid"


def _deploy_local(clients: sessions.Clients, args: argparse.Namespace, name: str) -> int:
    """Serve until SIGINT/SIGTERM, then delete model, endpoint config and endpoint (its containers)."""
    pid_file = local_pid_file(name)
    if pid_file.exists() and _alive(int(pid_file.read_text() or 0)):
        raise CommandError(f"a local endpoint named {name} is already served by pid {pid_file.read_text()}")
    stop = threading.Event()
    serving = False

    def on_signal(signum: int, frame: object) -> None:
        # While the SDK starts the container (it polls /ping for up to 2 minutes) only an exception gets
        # through; once serving, the main loop below is waiting for this event.
        if serving:
            stop.set()
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    try:
        commands.deploy(clients, _source(args), name, args.instance_type, 1, wait=True, out=sys.stdout)
        serving = True
        port = clients.session.sagemaker_runtime_client.serving_port
        print(f"local endpoint {name} is serving on http://localhost:{port}/invocations\n"
              f"invoke it with: python -m byoctl invoke --local --serving-port {port} {name} FILE\n"
              f"stop it with Ctrl-C or: python -m byoctl delete --local {name}", flush=True)
        while not stop.wait(1.0):
            pass
        print(f"stopping local endpoint {name}", flush=True)
        return 0
    except KeyboardInterrupt:
        print(f"interrupted before local endpoint {name} was ready", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one clean-up, not a second interrupted one
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _delete_local(clients, name)
        finally:
            if pid_file.exists() and pid_file.read_text() == str(os.getpid()):
                pid_file.unlink()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _delete_local(clients: sessions.Clients, name: str) -> None:
    # Local mode's deletes ignore names they do not know, so this also cleans up after a failed deploy.
    # The model goes first, as with the SDK's Predictor, whose model lookup needs the endpoint config.
    commands.delete_model(clients, name)
    clients.sagemaker.delete_endpoint(EndpointName=name)  # stops the containers
    print(f"deleted endpoint {name} (its containers are gone)", flush=True)
    clients.sagemaker.delete_endpoint_config(EndpointConfigName=name)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A finished process whose parent has not reaped it yet still answers kill(0): a zombie is gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all there is
    return state != "Z"


def _stop_local_endpoint(name: str, timeout_s: float = 120.0) -> None:
    pid_file = local_pid_file(name)
    pid = int(pid_file.read_text() or 0) if pid_file.exists() else 0
    if not _alive(pid):
        raise CommandError(f"no local endpoint named {name} is running (it lives in its `deploy --local` process)")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _alive(pid):
        raise CommandError(f"the deploy process {pid} of local endpoint {name} did not stop within {timeout_s:.0f} s")
    print(f"stopped local endpoint {name} (pid {pid}): model, endpoint and containers removed")


def make_clients(args: argparse.Namespace) -> sessions.Clients:
    if args.local:
        return sessions.local(args.region, args.serving_port)
    return sessions.real(args.region, args.profile)


def main(argv: Sequence[str] | None = None, clients: sessions.Clients | None = None) -> int:
    """Entry point; tests pass `clients` built on stubbed boto3 clients."""
    args = build_parser().parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if not args.local:
            return run(args, clients or make_clients(args))
        with leftovers.local_leftovers_removed():
            return run(args, clients or make_clients(args))
    except (CommandError, payloads.PayloadError, progress.WaitError) as e:
        print(f"byoctl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Jobs and endpoints on SageMaker go on without us; `status` picks a training job up again.
        print("byoctl: interrupted (anything already started on SageMaker keeps running)", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if not args.local:
            raise
        # Local mode reports a failed container as RuntimeError; its output is already on the screen.
        print(f"byoctl: error: local mode: {e}", file=sys.stderr)
        return 1
    except ClientError as e:
        error = e.response.get("Error", {})
        print(f"byoctl: error: {e.operation_name} failed: {error.get('Code')}: {error.get('Message')}",
              file=sys.stderr)
        return 1
    except BotoCoreError as e:
        print(f"byoctl: error: {e}", file=sys.stderr)
        return 1
