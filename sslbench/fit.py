"""The one training loop: pretext training, fine-tuning, the linear probe and the judge all run :func:`fit`.

:func:`fit` owns what every loop shares: iteration over seeded epochs (the caller's ``epoch_batches(epoch)`` gives
an order that depends only on the seed and the epoch), the resume offset, step counting, moving batches to the
device, an optional on-device ``batch_transform``, gradient accumulation (``accumulate`` micro-batches per
optimiser step, under DDP without an all-reduce until the last one), the finite-loss check of every backward pass
and of the weights at the end, progress reporting, and the logged losses.

Logged values stay on the device: each step's losses are added to running sums there (in float64, so the means
equal those of the Python floats they replace, bit for bit) and are read, one device sync, every ``log_every``
steps, at the end of each epoch when asked for, and at the end. A step function may return tensors or plain floats.

Two kinds of step function:

* with ``optimizer``: ``step(batch)`` returns the loss (a scalar tensor), or ``(loss, logs)``; :func:`fit` does the
  checked, scaled backward pass (the loss divided by ``accumulate``), the optimiser step and the end of the
  iteration through the :class:`~sslbench.runtime.Runtime`;
* without: ``step(batch)`` does its own optimisation (e.g. a GAN's two optimisers) and returns the logs; :func:`fit`
  ends the iteration (``runtime.end_step``). Such a step cannot accumulate.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from sslbench.errors import NonFiniteLossError, UsageError
from sslbench.progress import Progress
from sslbench.runtime import Runtime

__all__ = ["fit", "FitState", "LogMeter", "non_finite_state", "batch_size_of"]

Batch = Any
Logs = dict[str, Any]


def batch_size_of(batch: Batch) -> int:
    """Samples in a batch: the leading size of its ``image`` (or first tensor) for a dict, of its first item for a
    tuple or list, or of the batch itself."""
    if isinstance(batch, dict):
        first = batch["image"] if "image" in batch else next(v for v in batch.values() if torch.is_tensor(v))
        return int(first.shape[0])
    if isinstance(batch, (tuple, list)):
        return int(batch[0].shape[0])
    return int(batch.shape[0])


def non_finite_state(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` holding a NaN or an infinity."""
    return [name for name, value in module.state_dict().items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


class LogMeter:
    """Running sums of logged values, kept where they are computed: adding a tensor never syncs the device.

    Tensors are summed in float64 (float32 on devices without it), Python numbers as Python floats, so
    :meth:`means` equals ``sum(values) / len(values)`` over the same values read one by one."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, logs: Logs) -> None:
        for key, value in logs.items():
            if torch.is_tensor(value):
                value = value.detach()
                value = value.to(torch.float32 if value.device.type == "mps" else torch.float64)
            else:
                value = float(value)
            self._sums[key] = value if key not in self._sums else self._sums[key] + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def __bool__(self) -> bool:
        return bool(self._counts)

    def means(self, runtime: Runtime | None = None) -> dict[str, float]:
        """The mean of each key since the last :meth:`clear` (reads the device once per key).

        Under ``torchrun`` (``runtime`` given), the mean over processes of each process's mean: every process holds
        an equal chunk of the global batch, so that is the value one process would log for the whole batch (rank 0's
        own mean alone describes half the images). Every process must call it at the same step."""
        local = {key: float(total) / self._counts[key] for key, total in self._sums.items()}
        if runtime is None or not runtime.distributed or not local:
            return local
        values = torch.tensor(list(local.values()), dtype=torch.float64, device=runtime.device)
        return dict(zip(local, runtime.all_reduce_mean(values).tolist()))

    def clear(self) -> None:
        self._sums.clear()
        self._counts.clear()


def _as_floats(logs: Logs) -> dict[str, float]:
    return {key: float(value) for key, value in logs.items()}


@dataclass
class FitState:
    """Where a :func:`fit` call is; hooks read it, and it is what :func:`fit` returns.

    ``step`` counts optimiser steps (from ``start_step``); ``images`` and ``wall_s`` cover this call only."""

    step: int = 0
    epoch: int = 0
    images: int = 0
    wall_s: float = 0.0
    #: ``{"step": s, **means}`` every ``log_every`` steps and at the last step (means since the previous entry).
    history: list[dict[str, float]] = field(default_factory=list)
    #: Mean logs of every epoch this call ran (the last one possibly partial), when ``epoch_means`` is asked for.
    epoch_means: list[dict[str, float]] = field(default_factory=list)
    #: Logs of the first and of the last micro-batch of this call.
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter, repr=False)

    def elapsed(self) -> float:
        """Seconds since this call started."""
        return time.perf_counter() - self.started


def _unwrapped(module: nn.Module) -> nn.Module:
    return getattr(module, "_orig_mod", module)  # a torch.compile'd module wraps the original


def _no_sync(modules: Sequence[nn.Module]) -> contextlib.ExitStack:
    """Skip DDP's gradient all-reduce in every DistributedDataParallel module (a micro-batch that is not the last)."""
    stack = contextlib.ExitStack()
    for module in modules:
        module = _unwrapped(module)
        if isinstance(module, nn.parallel.DistributedDataParallel):
            stack.enter_context(module.no_sync())
    return stack


def fit(step: Callable[[Batch], Any], epoch_batches: Callable[[int], Iterable[Batch]], *, total: int,
        runtime: Runtime, progress: Progress | None = None, description: str = "train",
        optimizer: torch.optim.Optimizer | None = None, accumulate: int = 1, modules: Sequence[nn.Module] = (),
        start_step: int = 0, steps_per_epoch: int | None = None, log_every: int = 10, min_batch: int = 1,
        batch_transform: Callable[[Batch], Batch] | None = None, where: str = "", hint: str = "",
        weights: nn.Module | None = None, epoch_means: bool = False, empty_epoch: str = "",
        on_epoch_start: Callable[[int], None] | None = None,
        on_step_end: Callable[[FitState], None] | None = None,
        on_non_finite: Callable[[NonFiniteLossError, FitState], BaseException] | None = None) -> FitState:
    """Run ``total`` optimiser steps of ``step`` over the batches of successive epochs.

    Args:
        step: one micro-batch's work (see the module docstring for its two forms).
        epoch_batches: the batches of epoch ``e`` (0, 1, ...), in an order that depends only on the seed and ``e``;
            dict batches are moved to the runtime's device here.
        total: optimiser steps to reach (counting ``start_step``).
        optimizer: the optimiser :func:`fit` steps; None when ``step`` optimises by itself.
        accumulate: micro-batches per optimiser step (the effective batch is ``accumulate`` loader batches).
            The loss of each is divided by ``accumulate``, so the step follows the mean gradient.
        modules: the trained (possibly DDP-wrapped) modules; under DDP, micro-batches before the last of a step run
            in their ``no_sync()``.
        start_step: steps already done (a resumed run); needs ``steps_per_epoch`` unless 0.
        steps_per_epoch: fixes each epoch to that many steps (its later batches are not drawn), so a step number
            maps to (epoch, offset) for resuming; None: an epoch runs until its batches end, and an accumulation
            group may span two epochs.
        log_every: read the summed logs every this many steps (one device sync), into ``history`` and the bar.
        min_batch: smaller batches are skipped and not counted (batch norm in train mode needs 2).
        batch_transform: run on each batch once it is on the device, before ``step`` (e.g. on-device augmentation).
        where, hint: name the loop and what to change in a non-finite-loss error: ``"{where}: loss at step k of
            total is nan (not finite); {hint}"`` and ``"{where}: weights not finite after step k of total (...);
            {hint}"``.
        weights: checked for NaN or infinite values after the last step (a last update can break them).
        epoch_means: record the mean logs of every epoch (one sync per epoch).
        empty_epoch: the :class:`UsageError` message for an epoch without a single usable batch.
        on_epoch_start: called with the epoch number before its first batch (e.g. to set train/eval modes).
        on_step_end: called after every optimiser step (schedulers, checkpoints), with the state.
        on_non_finite: turns a :class:`NonFiniteLossError` (and the state at the failing step) into the exception
            to raise, e.g. one naming the checkpoint kept.
    """
    if accumulate < 1:
        raise UsageError(f"--accumulate {accumulate}: give a positive number of batches per optimiser step")
    if accumulate > 1 and optimizer is None:
        raise ValueError("fit: a step function that optimises by itself cannot accumulate gradients")
    if start_step and not steps_per_epoch:
        raise ValueError("fit: resuming at a step needs steps_per_epoch")
    state = FitState(step=start_step)
    window, epoch_meter = LogMeter(), LogMeter()
    micro = 0  # micro-batches of the current optimiser step done so far
    step_images = 0
    first: Logs | None = None
    last: Logs = {}
    progress = progress or Progress.disabled()
    state.epoch, offset = divmod(start_step, steps_per_epoch) if steps_per_epoch else (0, 0)

    def run_micro(batch: Batch, closing: bool) -> Logs:
        """One micro-batch: the step function, and with an optimiser the backward pass (and the step if
        ``closing``)."""
        with _no_sync(modules) if not closing else contextlib.nullcontext():
            out = step(batch)
            if optimizer is None:
                return dict(out)
            loss, logs = out if isinstance(out, tuple) else (out, {})
            name = f"{where}: loss at step {state.step + 1} of {total}" if where else "loss"
            try:
                runtime.backward(loss / accumulate if accumulate > 1 else loss, name=name)
            except NonFiniteLossError as exc:
                raise NonFiniteLossError(f"{exc}; {hint}" if hint else str(exc)) from exc
        if closing:
            runtime.step(optimizer)
        return {"loss": loss.detach(), **logs}

    with progress.task(description, total=total, completed=start_step) as bar:
        while state.step < total:
            if on_epoch_start is not None:
                on_epoch_start(state.epoch)
            skip = offset * accumulate
            limit = steps_per_epoch * accumulate if steps_per_epoch else None
            offset = 0
            used = 0
            for index, batch in enumerate(epoch_batches(state.epoch)):
                if index < skip:
                    continue
                if limit is not None and index >= limit:
                    break
                if isinstance(batch, dict):
                    batch = runtime.to_device(batch)
                size = batch_size_of(batch)
                if size < min_batch:
                    continue
                if batch_transform is not None:
                    batch = batch_transform(batch)
                micro += 1
                closing = micro == accumulate
                try:
                    logs = run_micro(batch, closing)
                except NonFiniteLossError as exc:
                    if on_non_finite is None:
                        raise
                    raise on_non_finite(exc, state) from exc
                used += 1
                state.images += size * runtime.world_size
                step_images += size * runtime.world_size
                first = logs if first is None else first
                last = logs
                window.add(logs)
                if epoch_means:
                    epoch_meter.add(logs)
                if not closing:
                    continue
                micro = 0
                runtime.end_step()
                state.step += 1
                fields: dict[str, float] = {}
                if state.step % log_every == 0 or state.step == total:
                    means = window.means(runtime)
                    window.clear()
                    state.history.append({"step": state.step, **means})
                    fields = {k: v for k, v in means.items() if k.startswith("loss")}
                bar.advance(1, images=step_images, **fields)
                step_images = 0
                if on_step_end is not None:
                    on_step_end(state)
                if state.step >= total:
                    break
            if not used:
                raise UsageError(empty_epoch or f"{description}: epoch {state.epoch} has no batch of at least "
                                                f"{min_batch} sample(s); use more data or a larger batch size")
            if epoch_means:
                state.epoch_means.append(epoch_meter.means(runtime))
                epoch_meter.clear()
            state.epoch += 1
    state.wall_s = state.elapsed()
    state.first = _as_floats(first or {})
    state.last = _as_floats(last)
    if weights is not None:
        broken = non_finite_state(weights)
        if broken:
            more = ", ..." if len(broken) > 3 else ""
            raise NonFiniteLossError(f"{where or description}: weights not finite after step {state.step} of "
                                     f"{total} ({', '.join(broken[:3])}{more}); {hint}")
    return state
