"""`train`: one SageMaker training job from config files to model modeldir.

Every failure ends here as a reason in output/failure and a non-zero exit, never a bare traceback.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import __version__, gpus, modeldir
from ..errors import ReasonError
from . import environment, runtime
from .environment import ContractError, Stopped, TrainingEnv

log = logging.getLogger("mxnet_byoc")

EXIT_FAILED = 1
EXIT_STOPPED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


class _StopFlag:
    """SIGTERM (StopTrainingJob, spot interruption) sets it; the loop checks it between steps."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped

    def handle(self, signum: int, frame: Any) -> None:
        self.stopped = True
        # Not through logging: the signal can arrive while the main thread is inside a write to stdout,
        # and a second write to that stream from here fails as a "reentrant call".
        os.write(2, b"WARNING: SIGTERM received: stopping after the current step and writing a checkpoint\n")


def _check_writable(directory: Path, what: str) -> None:
    """Fail before training, not after an hour of it, when an output folder cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ContractError(f"the {what} directory {directory} cannot be written: {e.strerror or e}") from e


def _load_data(env: TrainingEnv):
    from . import data

    hps = env.hyperparameters
    train = data.read_channel(env.training.path)
    if env.validation is not None:
        val = data.read_channel(env.validation.path, classes=train.classes)
        val_name = env.validation.name
    else:
        train, val = data.split(train, hps.validation_fraction, hps.seed)
        val_name = f"{hps.validation_fraction:.0%} of training"
    if train.input_shape != val.input_shape:
        raise data.DataError(f"validation images are {val.input_shape} but training images are {train.input_shape}")
    return train, val, val_name


def _confusion(labels, predictions, classes: list[Any]) -> dict[str, Any]:
    import numpy as np

    k = len(classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return {"classes": classes, "rows": "true label", "columns": "predicted label", "matrix": matrix.tolist()}


# Set once this process is a ps-lite worker. ps-lite's shutdown (at interpreter exit) waits for every other
# worker to shut down too, so a host that fails alone would hang there for ever: it leaves with os._exit.
_cluster_joined = threading.Event()


def _abort(paths: environment.Paths, reason: str, servers: Any) -> None:
    """From the watchdog thread: the main thread may be stuck in a push that will never return."""
    environment.write_failure(paths, reason)
    print(f"ERROR: {reason}", file=sys.stderr, flush=True)
    for _, proc in servers.procs:
        proc.kill()
    os._exit(EXIT_FAILED)


def run(env: TrainingEnv, should_stop) -> dict[str, Any]:
    """Train and write artifacts; returns the final metrics."""
    started = time.time()
    res, hps = env.resources, env.hyperparameters
    rt = runtime.resolve(hps, res.distributed)
    runtime.apply(rt)  # before MXNet is imported
    log.info("runtime: %s", rt.describe())
    if res.is_master:
        _check_writable(env.paths.model, "model")
        _check_writable(env.paths.output_data, "output data")
    _check_writable(env.checkpoint_dir, "checkpoint")
    servers = watchdog = kvstore = None
    if res.distributed:
        from . import distributed

        cluster = distributed.Cluster(res, distributed.resolve(res.hosts, hps.peer_timeout), hps.ps_port)
        servers = distributed.ParameterServers(cluster)
        servers.start()
        watchdog = distributed.Watchdog(cluster, servers, hps.peer_timeout,
                                        on_failure=lambda reason: _abort(env.paths, reason, servers))
        watchdog.start()
    try:
        import mxnet as mx

        if servers is not None:
            kvstore = mx.kv.create("dist_sync")
            _cluster_joined.set()
            print(f"joined cluster: kvstore=dist_sync rank={kvstore.rank} workers={kvstore.num_workers} "
                  f"servers={len(res.hosts)} host={res.current_host} hosts={','.join(res.hosts)} "
                  f"scheduler={cluster.root}:{cluster.port}", flush=True)
        final = _train(env, rt, should_stop, kvstore, started)
        if kvstore is not None:
            # SDK local mode shares one model folder and stops every container when the first exits:
            # nobody leaves before the first host has written the model.
            kvstore._barrier()
        return final
    finally:
        if watchdog is not None:
            watchdog.stop()
        if kvstore is not None:
            del kvstore  # finalises ps-lite, which lets this host's server and the scheduler exit
        if servers is not None:
            servers.stop()


def _train(env: TrainingEnv, rt: runtime.Runtime, should_stop, kvstore: Any, started: float) -> dict[str, Any]:
    import mxnet as mx
    import numpy as np

    from . import data, loop, metrics

    res, hps = env.resources, env.hyperparameters
    contexts = rt.contexts()
    train, val, val_name = _load_data(env)
    if kvstore is not None and env.training.distribution == "FullyReplicated":
        # By position in resourceconfig.json, not ps-lite's rank (IP order): a resumed job keeps its shard.
        train = data.shard(train, res.rank, len(res.hosts), hps.seed)
    log.info("training %s on %d images %s, validating on %d (%s), classes %s, devices %s",
             hps.model, len(train), train.input_shape, len(val), val_name, train.classes, contexts)
    trainer, result = loop.fit(
        hps, train, val, contexts, naive_engine=rt.naive_engine, kvstore=kvstore,
        checkpoint_dir=env.checkpoint_dir, host=res.current_host,
        should_stop=should_stop, emit=lambda line: print(line, flush=True),
    )
    if result.predictions is not None:
        val_loss, val_acc = result.final["validation_loss"], result.final["validation_accuracy"]
        predictions = result.predictions
    else:  # every epoch was done before a restart: evaluate the restored weights once
        val_loss, val_acc, predictions = trainer.evaluate(loop.to_device(val, contexts[0])[0], val.labels)
    final = {**result.final, "validation_loss": val_loss, "validation_accuracy": val_acc}
    if env.validation is not None and env.validation.name == "test":
        final["test_accuracy"] = val_acc
        print(metrics.format_line({"test_accuracy": val_acc}, res.current_host if kvstore else None), flush=True)
    final["wall_time_sec"] = round(time.time() - started, 3)
    final["validation_channel"] = val_name
    if res.is_master:
        symbol, args, aux = trainer.export()
        modeldir.save(symbol, args, aux, env.paths.model, train.input_shape, train.classes, {
            "model": hps.model,
            "hyperparameters": hps.as_dict(),
            "metrics": final,
            "history": result.history,
            "num_parameters": trainer.num_params,
            "training": {"job_name": env.job_name, "hosts": res.hosts,
                         "devices": [str(c) for c in contexts], "global_batch": trainer.global_batch,
                         "device_batch": trainer.device_batch, "train_records": len(train),
                         "validation_records": len(val)},
            "versions": {"mxnet_byoc": __version__, "mxnet": mx.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
        })
        modeldir.write_json_atomic(env.paths.output_data / "metrics.json", final)
        modeldir.write_json_atomic(env.paths.output_data / "confusion_matrix.json",
                                    _confusion(val.labels, predictions, train.classes))
    log.info("done in %.1f s: validation accuracy %.4f", time.time() - started, val_acc)
    return final


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ReasonError):
        return str(exc)
    if isinstance(exc, Stopped):
        return f"Training job stopped: {exc}"
    if isinstance(exc, MemoryError):
        return "out of memory: use a larger instance or a smaller batch_size"
    if isinstance(exc, OSError) and "libcuda.so" in str(exc):
        return ("the GPU image needs the NVIDIA driver (libcuda.so.1 was not found): run it on a GPU instance, "
                "or locally with `docker run --gpus all`; use the CPU image on machines without a GPU")
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected error {type(exc).__name__}: {first}"[:1000]


def main(argv: list[str] | None = None) -> int:
    from .script import runner as script_mode

    if script_mode.requested(modeldir.base_dir()):
        return script_mode.main()  # the user's own script (entry_point), not the built-in model
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flag = _StopFlag()
    signal.signal(signal.SIGTERM, flag.handle)
    paths = environment.Paths(modeldir.base_dir())
    try:
        gpus.require_supported()
        env = environment.load(paths.base)
        run(env, flag)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach output/failure
        if isinstance(exc, KeyboardInterrupt):
            exc = Exception("interrupted")
        reason = _reason(exc)
        stopped = isinstance(exc, Stopped)
        environment.write_failure(paths, reason, None if stopped else exc)
        print(f"ERROR: {reason}", file=sys.stderr, flush=True)
        code = EXIT_STOPPED if stopped else EXIT_FAILED
        if _cluster_joined.is_set():
            sys.stdout.flush()
            os._exit(code)  # the peers learn of it through the heartbeats (peer_timeout)
        return code


if __name__ == "__main__":
    sys.exit(main())
