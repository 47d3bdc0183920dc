"""Waiting on SageMaker: status changes, the training job's metric lines as they appear, final metrics.

A training job is followed by polling DescribeTrainingJob (status and secondary status) and reading
its CloudWatch log streams for the metric lines that training prints (the regexes of
mxnet_byoc.train.metrics, the same ones SageMaker uses). In local mode the container's output reaches
this process's stdout; `MetricTee` picks the metric lines out of it.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from byoctl.shared import metric_definitions

TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL_TRAINING = ("Completed", "Failed", "Stopped")
TERMINAL_TRANSFORM = ("Completed", "Failed", "Stopped")
ENDPOINT_WAITING = ("Creating", "Updating", "SystemUpdating")


class WaitError(Exception):
    """The job or endpoint ended badly; the message carries SageMaker's reason."""


class MetricParser:
    """Picks metric values out of log lines with the Estimator's metric definitions."""

    def __init__(self, definitions: list[dict[str, str]] | None = None):
        self.patterns = [(d["Name"], re.compile(d["Regex"])) for d in (definitions or metric_definitions())]
        self.latest: dict[str, float] = {}

    def parse(self, line: str) -> dict[str, float]:
        found = {}
        for name, pattern in self.patterns:
            match = pattern.search(line)
            if match:
                found[name] = float(match.group(1))
        self.latest.update(found)
        return found


def format_metrics(values: dict[str, float]) -> str:
    parts = []
    for name, value in values.items():
        text = f"{value:.0f}" if name in ("epoch", "images_per_sec") else f"{value:.4f}"
        parts.append(f"{name}={text}")
    return "  ".join(parts)


class MetricTee:
    """A stdout stand-in that passes everything through and remembers the metrics in complete lines."""

    def __init__(self, out: TextIO, parser: MetricParser):
        self.out = out
        self.parser = parser
        self._partial = ""

    def write(self, text: str) -> int:
        self.out.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.parser.parse(line)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)


def follow_training_job(
    sagemaker_client: Any,
    logs_client: Any | None,
    job_name: str,
    poll_s: float = 15.0,
    out: TextIO = sys.stdout,
    echo_logs: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Print status changes and metric lines until the job ends; its final description is returned."""
    parser = MetricParser()
    logs = _LogReader(logs_client, job_name) if logs_client is not None else None
    last_status = None
    while True:
        job = sagemaker_client.describe_training_job(TrainingJobName=job_name)
        status = (job["TrainingJobStatus"], job.get("SecondaryStatus"))
        if status != last_status:
            message = _last_transition_message(job)
            print(f"[{job_name}] {status[0]} / {status[1]}" + (f": {message}" if message else ""),
                  file=out, flush=True)
            last_status = status
        if logs is not None:
            for line in logs.new_lines():
                if echo_logs:
                    print(line, file=out)
                found = parser.parse(line)
                if found and not echo_logs:
                    print(f"[{job_name}] {format_metrics(found)}", file=out, flush=True)
        if job["TrainingJobStatus"] in TERMINAL_TRAINING:
            break
        sleep(poll_s)
    print_final(job, parser.latest, out)
    if job["TrainingJobStatus"] != "Completed":
        raise WaitError(f"training job {job_name} {job['TrainingJobStatus'].lower()}: "
                        f"{job.get('FailureReason', 'no reason given')}")
    return job


def print_final(job: dict[str, Any], seen: dict[str, float], out: TextIO = sys.stdout) -> None:
    """Final metrics: SageMaker's FinalMetricDataList when it has one, else what the logs showed."""
    final = {m["MetricName"]: float(m["Value"]) for m in job.get("FinalMetricDataList", [])} or seen
    name = job.get("TrainingJobName", "job")
    if final:
        print(f"[{name}] final metrics: {format_metrics(final)}", file=out)
    seconds = job.get("BillableTimeInSeconds")
    if seconds is not None:
        print(f"[{name}] billable seconds: {seconds}", file=out)
    artifacts = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if artifacts:
        print(f"[{name}] model artifacts: {artifacts}", file=out)
    out.flush()


def _poll(describe: Callable[[], dict[str, Any]], status_key: str, label: str, done: Callable[[str], bool],
          poll_s: float, out: TextIO, sleep: Callable[[float], None]) -> dict[str, Any]:
    """Describe until `done(status)`, printing each new status once."""
    last = None
    while True:
        resource = describe()
        status = resource[status_key]
        if status != last:
            print(f"{label} {status}", file=out, flush=True)
            last = status
        if done(status):
            return resource
        sleep(poll_s)


def wait_for_endpoint(
    sagemaker_client: Any,
    name: str,
    poll_s: float = 30.0,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    endpoint = _poll(lambda: sagemaker_client.describe_endpoint(EndpointName=name), "EndpointStatus",
                     f"[{name}] endpoint", lambda s: s not in ENDPOINT_WAITING, poll_s, out, sleep)
    status = endpoint["EndpointStatus"]
    if status != "InService":
        raise WaitError(f"endpoint {name} is {status}: {endpoint.get('FailureReason', 'no reason given')}")
    return endpoint


def wait_for_transform(
    sagemaker_client: Any,
    name: str,
    poll_s: float = 30.0,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    job = _poll(lambda: sagemaker_client.describe_transform_job(TransformJobName=name), "TransformJobStatus",
                f"[{name}] transform", lambda s: s in TERMINAL_TRANSFORM, poll_s, out, sleep)
    status = job["TransformJobStatus"]
    if status != "Completed":
        raise WaitError(f"transform job {name} {status.lower()}: {job.get('FailureReason', 'no reason given')}")
    return job


def _last_transition_message(job: dict[str, Any]) -> str:
    transitions = job.get("SecondaryStatusTransitions") or []
    return transitions[-1].get("StatusMessage", "") if transitions else ""


class _LogReader:
    """New lines of every log stream of one training job (one stream per host), in time order.

    Each poll asks for events from the newest timestamp seen so far and skips the event ids already
    read, so nothing is printed twice and nothing is lost while a stream grows.
    """

    def __init__(self, client: Any, job_name: str):
        self.client = client
        self.job_name = job_name
        self.start_time = 0
        self.seen: set[str] = set()

    def new_lines(self) -> list[str]:
        lines: list[str] = []
        kwargs: dict[str, Any] = {
            "logGroupName": TRAINING_LOG_GROUP,
            "logStreamNamePrefix": f"{self.job_name}/",
            "startTime": self.start_time,
        }
        newest = self.start_time
        while True:
            try:
                page = self.client.filter_log_events(**kwargs)
            except self.client.exceptions.ResourceNotFoundException:
                return lines  # no log group yet: the job has not logged anything
            for event in page.get("events", []):
                if event["eventId"] in self.seen:
                    continue
                self.seen.add(event["eventId"])
                lines.append(event["message"])
                newest = max(newest, int(event["timestamp"]))
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        self.start_time = newest
        return lines
