"""The one training loop of the harness: every pretext trains through :func:`train_pretext`.

It runs ``pretext.training_step`` over seeded epochs (the order depends only on seed and epoch, so a resumed run
sees the same batches), shows a progress bar, saves a resumable checkpoint every ``checkpoint_every`` steps and the
final one at the end, and resumes from the last one after a kill. A NaN or infinite loss stops the run with an error
that names the step and the last good checkpoint, which is kept. Device, precision and DDP come from the
:class:`~sslbench.runtime.Runtime`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from sslbench.checkpoints import CheckpointStore
from sslbench.config import TrainBudget
from sslbench.errors import NonFiniteLossError
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


def train_pretext(pretext: Pretext, dataset: Dataset, runtime: Runtime, budget: TrainBudget,
                  store: CheckpointStore, seed: int, progress: Progress, description: str = "train",
                  log_every: int = 10, checkpoint_every: int = 200) -> TrainSummary:
    """Train ``pretext`` on ``dataset`` within ``budget``, resuming from ``store``'s partial checkpoint if any."""
    drop_last = len(dataset) > budget.batch_size
    steps_per_epoch = len(runtime.loader(dataset, budget.batch_size, shuffle=True, seed=seed, drop_last=drop_last))
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

    pretext.train()
    window: dict[str, list[float]] = {}
    start = time.perf_counter()
    images = 0
    prior_images, prior_wall = summary.images, summary.wall_s

    def account() -> None:
        """Totals so far, over this process and every earlier one that trained this checkpoint."""
        wall = time.perf_counter() - start
        summary.steps = step
        summary.epochs = step / steps_per_epoch
        summary.images = prior_images + images
        summary.wall_s = prior_wall + wall
        summary.images_per_s = summary.images / summary.wall_s if summary.wall_s > 0 else 0.0
    with progress.task(description, total=total) as bar:
        bar.advance(step)
        while step < total:
            epoch, offset = divmod(step, steps_per_epoch)
            loader = runtime.loader(dataset, budget.batch_size, shuffle=True, seed=seed, epoch=epoch,
                                    drop_last=drop_last)
            for index, batch in enumerate(loader):
                if index < offset:
                    continue
                if step >= total:
                    break
                batch = runtime.to_device(batch)
                try:
                    logs = pretext.training_step(batch, runtime)
                except NonFiniteLossError as exc:
                    kept = (f"the last good checkpoint (step {last_saved}) is kept at {store.partial}"
                            if last_saved is not None else "no checkpoint had been saved yet")
                    raise NonFiniteLossError(
                        f"{description}: {exc} at step {step}; {kept}. Lower the learning rate or use "
                        "--precision fp32; a rerun with the same config resumes from the kept checkpoint."
                    ) from exc
                runtime.end_step()
                step += 1
                images += int(batch["image"].shape[0]) * runtime.world_size
                for key, value in logs.items():
                    window.setdefault(key, []).append(value)
                if step % log_every == 0 or step == total:
                    summary.history.append({"step": step, **{k: sum(v) / len(v) for k, v in window.items()}})
                    window.clear()
                bar.advance(1, **{k: v for k, v in logs.items() if k.startswith("loss")})
                if step % checkpoint_every == 0 and step < total and runtime.is_main:
                    account()
                    store.save(_state(pretext, step, summary), final=False)
                    last_saved = step
    account()
    if runtime.is_main:
        store.save(_state(pretext, step, summary), final=True)
    runtime.barrier()
    return summary


def load_trained(pretext: Pretext, store: CheckpointStore, runtime: Runtime) -> TrainSummary:
    """Load a finished checkpoint into ``pretext`` (built from the same config) and move it to the device."""
    state = store.load(final=True, map_location="cpu")
    pretext.load_state_dict(state["state_dict"])
    pretext.to(runtime.device)
    return TrainSummary(**state["summary"])
