"""Pretext training: every pretext trains through :func:`train_pretext`, a caller of the one loop,
:func:`sslbench.fit.fit`.

It runs ``pretext.training_step`` over seeded epochs (the order depends only on seed and epoch, so a resumed run
sees the same batches), saves a resumable checkpoint every ``checkpoint_every`` steps and the final one at the end,
and resumes from the last one after a kill. With ``budget.accumulate`` > 1 the loop computes the loss of a
single-optimiser pretext (``compute_loss``) itself and steps its optimiser once every ``accumulate`` batches. A NaN
or infinite loss stops the run with an error that names the step and the last good checkpoint, which is kept.
Device, precision and DDP come from the :class:`~sslbench.runtime.Runtime`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import Dataset

from sslbench.checkpoints import CheckpointStore
from sslbench.config import TrainBudget
from sslbench.errors import NonFiniteLossError, UsageError
from sslbench.fit import FitState, fit
from sslbench.pretext import Pretext
from sslbench.progress import Progress
from sslbench.runtime import Runtime

__all__ = ["TrainSummary", "train_pretext", "load_trained"]


@dataclass
class TrainSummary:
    """What a training run did, recorded with every result of its checkpoint."""

    steps: int = 0
    epochs: float = 0.0
    images: int = 0
    wall_s: float = 0.0
    images_per_s: float = 0.0
    resumed_from_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    #: One entry per resume: the step it resumed from and when (Unix time).
    resumes: list[dict[str, float]] = field(default_factory=list)
    #: Training processes that contributed (1 + the number of resumes).
    sessions: int = 1

    @property
    def first_losses(self) -> dict[str, float]:
        return self.history[0] if self.history else {}

    @property
    def last_losses(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    def as_record(self) -> dict[str, Any]:
        """The record's ``train`` block: totals over every process that trained this checkpoint."""
        return {"steps": self.steps, "epochs": self.epochs, "images": self.images, "wall_s": self.wall_s,
                "images_per_s": self.images_per_s, "sessions": self.sessions, "resumes": self.resumes,
                "first_losses": self.first_losses, "last_losses": self.last_losses, "history": self.history}


def _state(pretext: Pretext, step: int, summary: TrainSummary) -> dict[str, Any]:
    return {
        "state_dict": pretext.state_dict(),
        "optimizers": {k: opt.state_dict() for k, opt in getattr(pretext, "optimizers", {}).items()},
        "step": step,
        "summary": asdict(summary),
        "rng": torch.get_rng_state(),
    }


def _loss_step(pretext: Pretext, runtime: Runtime) -> Callable[[dict[str, torch.Tensor]], Any]:
    """The loss and logs of a single-optimiser pretext on a batch (what :meth:`Pretext.training_step` computes before
    its backward pass), for :func:`fit` to backpropagate and step: the logs stay on the device, and gradients can
    accumulate over batches."""
    def step(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with runtime.autocast():
            loss, logs = pretext.train_model(batch)
        return loss, {k: v.detach() for k, v in logs.items()}
    return step


def train_pretext(pretext: Pretext, dataset: Dataset, runtime: Runtime, budget: TrainBudget,
                  store: CheckpointStore, seed: int, progress: Progress, description: str = "train",
                  log_every: int = 10, checkpoint_every: int = 200,
                  batch_transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
                  ) -> TrainSummary:
    """Train ``pretext`` on ``dataset`` within ``budget``, resuming from ``store``'s partial checkpoint if any.

    A step is one optimiser step over ``budget.accumulate`` batches of ``budget.batch_size``; ``batch_transform``
    runs on each batch on the device (see :func:`~sslbench.fit.fit`)."""
    accumulate = budget.accumulate
    # A pretext that overrides training_step (several optimisers) steps by itself; the others' loss goes through fit.
    own_steps = type(pretext).training_step is not Pretext.training_step
    if own_steps and accumulate > 1:
        raise UsageError(f"--accumulate {accumulate}: pretext {type(pretext).__name__} runs its own optimisation "
                         "steps (training_step), so its gradients cannot be accumulated; use --accumulate 1 and a "
                         "larger --batch-size")
    drop_last = len(dataset) > budget.batch_size
    # One loader for every epoch (``set_epoch``), so its workers (with --workers) persist instead of starting again.
    loader = runtime.loader(dataset, budget.batch_size, shuffle=True, seed=seed, drop_last=drop_last, repeat=True)
    batches = len(loader)
    if accumulate > batches:
        raise UsageError(f"--accumulate {accumulate}: an epoch has only {batches} batch(es) of {budget.batch_size}; "
                         "accumulate at most that many, or lower --batch-size")
    steps_per_epoch = batches // accumulate
    total = budget.steps if budget.steps is not None else max(1, math.ceil(budget.epochs * steps_per_epoch))
    summary = TrainSummary()
    step = 0
    # Weights (and data-dependent modules such as an ab-bin head) exist before setup creates the optimisers.
    state = store.load(final=False, map_location="cpu") if store.partial.is_file() else None
    if state is not None:
        pretext.load_state_dict(state["state_dict"])
    else:
        prep_loader = runtime.loader(dataset, budget.batch_size, shuffle=False, seed=seed)
        pretext.prepare(runtime.batches(prep_loader), runtime)
    pretext.setup(runtime)
    if state is not None:
        for name, opt in pretext.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        torch.set_rng_state(state["rng"].cpu())
        step = int(state["step"])
        summary = TrainSummary(**state["summary"])
        summary.resumed_from_step = step
        summary.resumes.append({"step": step, "time": time.time()})
        summary.sessions += 1
    last_saved = step if store.partial.is_file() else None

    if budget.augment and batch_transform is None:
        from sslbench.datasets.augment import DeviceAugment

        # Counted in micro-batches from the start of the run, so a resumed run augments as an uninterrupted one; under
        # torchrun each process takes its chunk of the draws for the global batch, as it takes its chunk of the batch.
        batch_transform = DeviceAugment(seed, start=step * accumulate, shard=(runtime.rank, runtime.world_size))
    pretext.train()
    prior_images, prior_wall, prior_history = summary.images, summary.wall_s, list(summary.history)

    def account(fit_state: FitState) -> None:
        """Totals so far, over this process and every earlier one that trained this checkpoint."""
        summary.steps = fit_state.step
        summary.epochs = fit_state.step / steps_per_epoch
        summary.images = prior_images + fit_state.images
        summary.wall_s = prior_wall + fit_state.elapsed()
        summary.images_per_s = summary.images / summary.wall_s if summary.wall_s > 0 else 0.0
        summary.history = prior_history + fit_state.history

    def checkpoint(fit_state: FitState) -> None:
        nonlocal last_saved
        if fit_state.step % checkpoint_every == 0 and fit_state.step < total and runtime.is_main:
            account(fit_state)
            store.save(_state(pretext, fit_state.step, summary), final=False)
            last_saved = fit_state.step

    def non_finite(exc: NonFiniteLossError, fit_state: FitState) -> NonFiniteLossError:
        kept = (f"the last good checkpoint (step {last_saved}) is kept at {store.partial}"
                if last_saved is not None else "no checkpoint had been saved yet")
        at = f" at step {fit_state.step}" if own_steps else ""  # fit's own message already names the step
        return NonFiniteLossError(
            f"{description}: {exc}{at}; {kept}. Lower the learning rate or use --precision fp32; a rerun with the "
            "same config resumes from the kept checkpoint.")

    def epoch_batches(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        loader.sampler.set_epoch(epoch)
        return loader

    if own_steps:
        step_fn, optimizer, modules = (lambda batch: pretext.training_step(batch, runtime)), None, []
    else:
        (optimizer,) = pretext.optimizers.values()
        step_fn, modules = _loss_step(pretext, runtime), [pretext.train_model]
    fit_state = fit(step_fn, epoch_batches, total=total, runtime=runtime, progress=progress, description=description,
                    optimizer=optimizer, accumulate=accumulate, modules=modules, start_step=step,
                    steps_per_epoch=steps_per_epoch, log_every=log_every, batch_transform=batch_transform,
                    where=f"{type(pretext).__name__}", on_step_end=checkpoint, on_non_finite=non_finite)
    account(fit_state)
    if runtime.is_main:
        store.save(_state(pretext, fit_state.step, summary), final=True)
    runtime.barrier()
    return summary


def load_trained(pretext: Pretext, store: CheckpointStore, runtime: Runtime) -> TrainSummary:
    """Load a finished checkpoint into ``pretext`` (built from the same config) and move it to the device."""
    state = store.load(final=True, map_location="cpu")
    pretext.load_state_dict(state["state_dict"])
    pretext.to(runtime.device)
    return TrainSummary(**state["summary"])
