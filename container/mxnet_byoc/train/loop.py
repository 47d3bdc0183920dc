"""The training loop: data-parallel executors over one flat parameter buffer per device.

Why not a plain Gluon loop: per-step framework overhead dominates a small network on a CPU (a Gluon
Trainer issues one update op per parameter and copies each batch). Here every device binds one executor
whose weights and gradients are views into one flat buffer, so a step is: copy a batch view, forward,
backward, one reduction per extra device (and one push/pull to the parameter servers with several hosts),
and ONE optimizer op for all weights. The dataset sits on each device once; shuffling and augmentation
are one op per epoch.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mxnet as mx
import numpy as np

from . import checkpoints, data, distributed, hostpath, metrics, models
from .data import Dataset
from .environment import Stopped, TrainingError
from .hyperparameters import Hyperparameters

log = logging.getLogger(__name__)

EVAL_BATCH = 1000


@dataclass
class Result:
    history: list[dict[str, float]] = field(default_factory=list)
    predictions: np.ndarray | None = None  # on the validation set, after the last epoch trained here

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def device_batch(batch_size: int, devices: int, workers: int) -> int:
    """Images per device and step: `batch_size` shared out over every device of every host, or the nearest
    whole share (at least one) when it does not divide evenly, so that any batch size suits any cluster."""
    per_step = devices * workers
    return max(1, (2 * batch_size + per_step) // (2 * per_step))


def learning_rate(hps: Hyperparameters, update: int, total: int) -> float:
    """One-cycle: linear warm-up from lr/25 to lr, then cosine decay to 0; or constant."""
    if hps.lr_schedule == "constant" or total <= 1:
        return hps.learning_rate
    warm = int(total * hps.warmup_fraction)
    if update < warm:
        start = hps.learning_rate / 25
        return start + (hps.learning_rate - start) * update / warm
    progress = (update - warm) / max(1, total - warm)
    return hps.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Optimizer:
    """One update op over the flat weight buffer: the cheapest update MXNet offers per step.

    With host access (CPU, naive engine) SGD runs as one or two BLAS axpby passes instead.
    """

    BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

    def __init__(self, hps: Hyperparameters, weights: mx.nd.NDArray, rescale: float, host: bool = False):
        self.hps, self.weights, self.rescale = hps, weights, rescale
        ctx, n = weights.context, weights.shape[0]
        if hps.optimizer == "adam":
            self.states = [mx.nd.zeros(n, ctx=ctx), mx.nd.zeros(n, ctx=ctx)]
        elif hps.optimizer == "nesterov" or hps.momentum > 0:
            self.states = [mx.nd.zeros(n, ctx=ctx)]
        else:
            self.states = []
        self.host = host and hps.optimizer == "sgd"
        if self.host:
            self._w = hostpath.view(weights)
            self._mom = hostpath.view(self.states[0]) if self.states else None

    def update(self, grads: mx.nd.NDArray, lr: float, t: int, host_grads=None) -> None:
        hps, w = self.hps, self.weights
        if self.host and host_grads is not None:
            # MXNet's sgd(_mom)_update semantics: g' = rescale * g + wd * w; mom = m * mom - lr * g'; w += mom
            if self._mom is None:
                hostpath.axpby(-lr * self.rescale, host_grads, 1.0 - lr * hps.wd, self._w)
            else:
                hostpath.axpby(-lr * self.rescale, host_grads, hps.momentum, self._mom)
                if hps.wd:
                    hostpath.axpby(-lr * hps.wd, self._w, 1.0, self._mom)
                hostpath.axpby(1.0, self._mom, 1.0, self._w)
        elif hps.optimizer == "adam":
            # MXNet's adam_update leaves bias correction to the caller (as Gluon's Adam does).
            lr = lr * math.sqrt(1 - self.BETA2 ** t) / (1 - self.BETA1 ** t)
            mx.nd.adam_update(w, grads, self.states[0], self.states[1], lr=lr, wd=hps.wd,
                              rescale_grad=self.rescale, beta1=self.BETA1, beta2=self.BETA2,
                              epsilon=self.EPS, out=w)
        elif hps.optimizer == "nesterov":
            mx.nd.nag_mom_update(w, grads, self.states[0], lr=lr, momentum=hps.momentum, wd=hps.wd,
                                 rescale_grad=self.rescale, out=w)
        elif self.states:
            mx.nd.sgd_mom_update(w, grads, self.states[0], lr=lr, momentum=hps.momentum, wd=hps.wd,
                                 rescale_grad=self.rescale, out=w)
        else:
            mx.nd.sgd_update(w, grads, lr=lr, wd=hps.wd, rescale_grad=self.rescale, out=w)


def _training_symbol(logits: mx.sym.Symbol) -> mx.sym.Symbol:
    label = mx.sym.var("label")
    # normalization="null": gradients are summed over the batch; the optimizer rescales by the global batch.
    prob = mx.sym.SoftmaxOutput(logits, label, normalization="null", name="softmax")
    loss = mx.sym.sum(-mx.sym.log(mx.sym.pick(prob, label) + 1e-12))
    correct = mx.sym.sum(mx.sym.argmax(prob, axis=1) == label)
    stats = mx.sym.BlockGrad(mx.sym.concat(loss.reshape((1,)), correct.reshape((1,)), dim=0))
    return mx.sym.Group([prob, stats])


class Replica:
    """One device's executor, bound to views of its flat weight and gradient buffers."""

    def __init__(self, symbol: mx.sym.Symbol, ctx: mx.Context, batch: int, input_shape: tuple[int, ...],
                 layout: list[tuple[str, tuple[int, ...], int, int]], aux: dict[str, mx.nd.NDArray], host: bool):
        size = layout[-1][3] if layout else 0
        self.ctx = ctx
        self.weights = mx.nd.zeros(size, ctx=ctx)
        self.grads = mx.nd.zeros(size, ctx=ctx)
        args = {"data": mx.nd.zeros((batch, *input_shape), ctx=ctx), "label": mx.nd.zeros(batch, ctx=ctx)}
        grads, req = {}, {"data": "null", "label": "null"}
        for name, shape, start, end in layout:
            args[name] = self.weights[start:end].reshape(shape)
            grads[name] = self.grads[start:end].reshape(shape)
            req[name] = "write"
        self.aux = {k: v.copyto(ctx) for k, v in aux.items()}
        self.exe = symbol.bind(ctx, args=args, args_grad=grads, grad_req=req, aux_states=self.aux)
        self.data, self.label = args["data"], args["label"]
        self.stats = mx.nd.zeros(2, ctx=ctx)
        self.host = host
        if host:
            self._fast = hostpath.Executor(self.exe)
            self._data, self._label = hostpath.view(self.data), hostpath.view(self.label)
            self._stats, self._stats_out = hostpath.view(self.stats), hostpath.view(self.exe.outputs[1])
            self.host_weights, self.host_grads = hostpath.view(self.weights), hostpath.view(self.grads)

    def step(self, x, y) -> None:
        """x, y: NDArray views of one batch, or numpy views in host mode."""
        if self.host:
            np.copyto(self._data, x)
            np.copyto(self._label, y)
            self._fast.forward_backward()
            self._stats += self._stats_out
            return
        x.copyto(self.data)
        y.copyto(self.label)
        self.exe.forward(is_train=True)
        self.exe.backward()
        self.stats += self.exe.outputs[1]


def to_device(dataset: Dataset, ctx: mx.Context) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Images as float32 in [0, 1] and labels as float32, on `ctx`."""
    x = mx.nd.array(dataset.images, ctx=ctx, dtype=np.uint8).astype(np.float32) / 255.0
    y = mx.nd.array(dataset.labels, ctx=ctx, dtype=np.float32)
    return x, y


class _EpochFeeder:
    """Each epoch's shuffled (and for the cnn shifted) batches, laid out (steps, devices, batch, C, H, W), so
    that a step only takes views. Shuffling and shifting happen once per epoch on the uint8 host copy.

    On the host path one numpy buffer, allocated once, serves every CPU context (steps copy from it); on
    devices each context gets the epoch as one float array.
    """

    def __init__(self, train: Dataset, contexts: list[mx.Context], steps: int, batch: int, host: bool,
                 augment: bool):
        self.train, self.contexts, self.augment, self.host = train, contexts, augment, host
        self.count = steps * batch * len(contexts)
        self.shape = (steps, len(contexts), batch, *train.input_shape)
        if host:
            self.x = np.empty(self.shape, dtype=np.float32)
            self.y = np.empty(self.shape[:3], dtype=np.float32)
            # Without augmentation the scaled images never change: scale once, then gather each epoch.
            self.scaled = None if augment else train.images.astype(np.float32) * np.float32(1 / 255)

    @staticmethod
    def step(views: list[tuple[Any, Any]], i: int) -> list[tuple[Any, Any]]:
        """Step `i`'s batch on every device, from what epoch() returned."""
        return [(x[i][d], y[i][d]) for d, (x, y) in enumerate(views)]

    def epoch(self, rng: np.random.RandomState) -> list[tuple[Any, Any]]:
        """Per device, (images, labels) indexed [step][device]: numpy on the host path, NDArrays else."""
        order = rng.permutation(len(self.train))[: self.count]
        if self.host:
            x = self.x.reshape(self.count, *self.shape[3:])
            if self.scaled is not None:
                np.take(self.scaled, order, axis=0, out=x)
            else:
                np.multiply(data.shifted(self.train.images[order], rng), np.float32(1 / 255), out=x)
            self.y.reshape(-1)[:] = self.train.labels[order]
            return [(self.x, self.y)] * len(self.contexts)
        images = self.train.images[order]
        if self.augment:
            images = data.shifted(images, rng)
        self.views = []  # the previous epoch's device arrays go before the next ones are made
        for ctx in self.contexts:
            x = mx.nd.array(images, ctx=ctx, dtype=np.uint8).astype(np.float32)
            x *= 1.0 / 255
            y = mx.nd.array(self.train.labels[order], ctx=ctx)
            self.views.append((x.reshape(self.shape), y.reshape(self.shape[:3])))
        return self.views


class Trainer:
    """Owns the replicas, the optimizer and the exchange of gradients between devices and hosts."""

    def __init__(self, hps: Hyperparameters, input_shape: tuple[int, ...], num_classes: int,
                 contexts: list[mx.Context], kvstore: Any = None, naive_engine: bool = False):
        self.hps, self.contexts, self.kvstore = hps, contexts, kvstore
        workers = kvstore.num_workers if kvstore is not None else 1
        self.device_batch = device_batch(hps.batch_size, len(contexts), workers)
        self.host_batch = self.device_batch * len(contexts)
        self.global_batch = self.host_batch * workers
        if self.global_batch != hps.batch_size:
            log.warning("batch_size %d does not divide evenly over %d devices x %d hosts: each device takes %d "
                        "images per step, a global batch of %d", hps.batch_size, len(contexts), workers,
                        self.device_batch, self.global_batch)
        mx.random.seed(hps.seed)
        self.net = models.build(hps.model, num_classes, input_shape, hps.hidden_units)
        self.net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=mx.cpu())
        self.net(mx.nd.zeros((1, *input_shape)))  # completes deferred shape inference
        self.logits = self.net(mx.sym.var("data"))
        symbol = _training_symbol(self.logits)
        params = {p.name: p for p in self.net.collect_params().values()}
        arg_names = [a for a in symbol.list_arguments() if a not in ("data", "label")]
        self.aux_names = symbol.list_auxiliary_states()
        self.layout, offset = [], 0
        for name in arg_names:
            shape = params[name].shape
            size = int(np.prod(shape))
            self.layout.append((name, shape, offset, offset + size))
            offset += size
        self.num_params = offset
        aux = {k: params[k].data() for k in self.aux_names}
        # Host mode needs synchronous execution and CPU memory; parameter servers need the threaded engine.
        self.host = hostpath.available(contexts, naive_engine) and kvstore is None
        self.replicas = [Replica(symbol, ctx, self.device_batch, input_shape, self.layout, aux, self.host)
                         for ctx in contexts]
        main = self.replicas[0]
        for name, _, start, end in self.layout:
            main.weights[start:end] = params[name].data().reshape(-1).as_in_context(main.ctx)
        if kvstore is not None:
            # Rank 0's initial weights win (kvstore init keeps the first worker's value).
            kvstore.init(distributed.WEIGHTS_KEY, main.weights)
            kvstore.pull(distributed.WEIGHTS_KEY, out=main.weights)
            kvstore.init(distributed.GRADIENTS_KEY, mx.nd.zeros(self.num_params, ctx=main.ctx))
        self._broadcast()
        self.optimizer = Optimizer(hps, main.weights, rescale=1.0 / self.global_batch, host=self.host)
        self.updates = 0

    # -- state ------------------------------------------------------------------------------------
    def _broadcast(self) -> None:
        for r in self.replicas[1:]:
            if self.host:
                np.copyto(r.host_weights, self.replicas[0].host_weights)
            else:
                self.replicas[0].weights.copyto(r.weights)

    def state_arrays(self) -> dict[str, mx.nd.NDArray]:
        main = self.replicas[0]
        arrays = {"weights": main.weights}
        arrays.update({f"opt{i}": s for i, s in enumerate(self.optimizer.states)})
        arrays.update({f"aux:{k}": v for k, v in main.aux.items()})
        return arrays

    def load_state(self, arrays: dict[str, mx.nd.NDArray], updates: int) -> None:
        self.updates = updates
        main = self.replicas[0]
        arrays["weights"].copyto(main.weights)
        for i, s in enumerate(self.optimizer.states):
            arrays[f"opt{i}"].copyto(s)
        for r in self.replicas:
            for k, v in r.aux.items():
                arrays[f"aux:{k}"].copyto(v)
        self._broadcast()

    def export(self) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray], dict[str, mx.nd.NDArray]]:
        main = self.replicas[0]
        args = {name: main.weights[s:e].reshape(shape).copy() for name, shape, s, e in self.layout}
        aux = {k: v.copy() for k, v in main.aux.items()}
        return self.logits, args, aux

    # -- one step ---------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        for r in self.replicas:
            r.stats[:] = 0

    def train_stats(self, steps: int) -> tuple[float, float]:
        """Mean loss and accuracy over the last `steps` steps' images (since reset_stats), every device's."""
        loss, correct = sum(r.stats.asnumpy() for r in self.replicas)
        seen = max(1, steps * self.host_batch)
        return float(loss / seen), float(correct / seen)

    def step(self, batches: list[tuple[mx.nd.NDArray, mx.nd.NDArray]], lr: float) -> None:
        for replica, (x, y) in zip(self.replicas, batches):
            replica.step(x, y)
        main = self.replicas[0]
        for r in self.replicas[1:]:
            if self.host:
                hostpath.axpby(1.0, r.host_grads, 1.0, main.host_grads)
            else:
                main.grads += r.grads.as_in_context(main.ctx)
        if self.kvstore is not None:
            self.kvstore.push(distributed.GRADIENTS_KEY, main.grads)
            self.kvstore.pull(distributed.GRADIENTS_KEY, out=main.grads)
        self.updates += 1
        self.optimizer.update(main.grads, lr, self.updates, main.host_grads if self.host else None)
        self._broadcast()

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, x: mx.nd.NDArray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Loss, accuracy and predictions through a fresh inference bind on copies of the weights
        (an executor sharing arrays with training can keep stale MKL-DNN weight layouts)."""
        _, args, aux = self.export()
        ctx = self.replicas[0].ctx
        n = x.shape[0]
        batch = min(EVAL_BATCH, n)
        args = {k: v.as_in_context(ctx) for k, v in args.items()}
        args["data"] = mx.nd.zeros((batch, *x.shape[1:]), ctx=ctx)
        exe = mx.sym.softmax(self.logits).bind(ctx, args=args, aux_states={k: v.as_in_context(ctx)
                                                                          for k, v in aux.items()},
                                               grad_req="null")
        probs = []
        for start in range(0, n, batch):
            chunk = x[start:start + batch]
            if chunk.shape[0] < batch:
                pad = mx.nd.zeros((batch - chunk.shape[0], *x.shape[1:]), ctx=ctx)
                chunk = mx.nd.concat(chunk, pad, dim=0)
            chunk.copyto(args["data"])
            exe.forward(is_train=False)
            probs.append(exe.outputs[0].asnumpy())
        p = np.concatenate(probs)[:n]
        labels = y.astype(np.int64)
        loss = float(-np.log(p[np.arange(n), labels] + 1e-12).mean())
        pred = p.argmax(axis=1)
        return loss, float((pred == labels).mean()), pred


def steps_per_epoch(records: int, host_batch: int, kvstore: Any = None) -> int:
    """Whole batches in this host's records; with several hosts the fewest of any host's, because
    dist_sync hangs when workers run different numbers of steps (apache/mxnet#7888)."""
    steps = records // host_batch
    if kvstore is not None:
        steps = distributed.agree_min(kvstore, distributed.STEPS_KEY, steps)
    if steps == 0:
        raise TrainingError(f"{records} training records are fewer than one batch of {host_batch}")
    return steps


def checkpoint_settings(hps: Hyperparameters, trainer: Trainer, steps: int) -> dict[str, Any]:
    """What a checkpoint must share with this job to be resumed from: its arrays and positions mean the same."""
    return {"model": hps.model, "num_params": trainer.num_params, "steps_per_epoch": steps,
            "batch_size": hps.batch_size, "optimizer": hps.optimizer}


def resume(trainer: Trainer, store: checkpoints.Store, steps: int,
           kvstore: Any = None) -> checkpoints.Checkpoint | None:
    """The newest checkpoint every host can resume from, loaded into `trainer`; None to start afresh."""
    agree = None if kvstore is None else functools.partial(distributed.agree_min, kvstore, distributed.RESUME_KEY)
    ckpt = store.resume(steps, agree)
    if ckpt is not None:
        trainer.load_state(ckpt.arrays, ckpt.updates)
    return ckpt


def save(store: checkpoints.Store | None, trainer: Trainer, position: checkpoints.Position,
         history: list[dict[str, float]]) -> None:
    """A checkpoint of `trainer` at `position`, when checkpoints are kept."""
    if store is not None:
        store.save(checkpoints.Checkpoint(epoch=position.epoch, step=position.step, updates=trainer.updates,
                                          arrays=trainer.state_arrays(), info={"history": history}))


def fit(hps: Hyperparameters, train: Dataset, val: Dataset, contexts: list[mx.Context], *,
        naive_engine: bool = False, kvstore: Any = None, checkpoint_dir: Any = None, host: str = "algo-1",
        should_stop: Callable[[], bool] = lambda: False, emit: Callable[[str], None] = print) -> tuple[Trainer, Result]:
    """Train, printing one metric line per epoch; resume from and write checkpoints when a folder is given.
    `naive_engine`: MXNet runs under the NaiveEngine (runtime.Runtime), which lets CPU devices take the host path."""
    trainer = Trainer(hps, train.input_shape, len(train.classes), contexts, kvstore, naive_engine)
    steps = steps_per_epoch(len(train), trainer.host_batch, kvstore)
    total = steps * hps.epochs
    result = Result()
    start, store = checkpoints.Position(0, 0), None
    if checkpoint_dir is not None:
        store = checkpoints.Store(checkpoint_dir, host, checkpoint_settings(hps, trainer, steps))
        ckpt = resume(trainer, store, steps, kvstore)
        if ckpt is not None:
            start, result.history = ckpt.position, list(ckpt.info.get("history", []))
            emit(f"resumed from {start}")

    val_x, _ = to_device(val, contexts[0])
    feeder = _EpochFeeder(train, contexts, steps, trainer.device_batch, trainer.host,
                          augment=hps.augment and hps.model == "cnn")
    for epoch in range(start.epoch, hps.epochs):
        first = start.step if epoch == start.epoch else 0
        batches = feeder.epoch(np.random.RandomState(hps.seed * 1000 + epoch))
        trainer.reset_stats()
        tic = time.perf_counter()
        for i in range(first, steps):
            if should_stop():
                mx.nd.waitall()
                save(store, trainer, checkpoints.Position(epoch, i), result.history)
                raise Stopped(f"stopped by SIGTERM at epoch {epoch + 1} step {i}/{steps}; checkpoint written")
            lr = learning_rate(hps, epoch * steps + i, total)
            trainer.step(feeder.step(batches, i), lr)
            if hps.log_interval and (i + 1) % hps.log_interval == 0:
                loss, accuracy = trainer.train_stats(i + 1 - first)
                emit(f"progress: epoch {epoch + 1}/{hps.epochs} step {i + 1}/{steps} "
                     f"loss {loss:.4f} accuracy {accuracy:.4f} lr {lr:.5f}")
        mx.nd.waitall()
        elapsed = time.perf_counter() - tic
        loss, accuracy = trainer.train_stats(steps - first)
        val_loss, val_accuracy, result.predictions = trainer.evaluate(val_x, val.labels)
        values = {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy,
                  "validation_loss": val_loss, "validation_accuracy": val_accuracy,
                  "images_per_sec": max(1, (steps - first) * trainer.host_batch) / max(elapsed, 1e-9)}
        result.history.append(values)
        emit(metrics.format_line(values, host if kvstore is not None else None))
        save(store, trainer, checkpoints.Position(epoch + 1, 0), result.history)
    return trainer, result
