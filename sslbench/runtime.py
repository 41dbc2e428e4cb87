"""Device, precision, randomness and process-group handling, in one place.

Every training loop in the harness (pretext training in :mod:`sslbench.trainer`, the protocols' probes and
fine-tuning) goes through a :class:`Runtime`: it picks the device, wraps forward passes in autocast for mixed
precision, scales and checks losses (a NaN or infinite loss raises :class:`NonFiniteLossError` before it touches the
weights), wraps modules in DistributedDataParallel under ``torchrun`` and builds seeded data loaders. Code written
against it runs unchanged on one CPU, one GPU or many.

Under ``torchrun`` (see :mod:`sslbench.distributed`): batch sizes are global (each process takes its chunk of the
very batch one process would draw), evaluation loaders shard the split into contiguous runs of whole batches, and
:meth:`Runtime.gather_rows`, :meth:`Runtime.all_reduce_sum` and :meth:`Runtime.agree` put the results back together
exactly, in the single-process order.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sslbench import distributed as dist_ops
from sslbench.errors import NonFiniteLossError, UsageError

__all__ = ["Runtime", "resolve_device", "seed_everything", "move_batch"]

PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable CUDA request is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_batch(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Move every tensor in a batch dict to ``device`` (non-blocking from pinned memory); with ``channels_last``,
    4-D tensors (images) are laid out NHWC, as the convolutions of a channels-last model want them."""
    def move(value: torch.Tensor) -> torch.Tensor:
        if channels_last and value.dim() == 4:
            return value.to(device, memory_format=torch.channels_last, non_blocking=True)
        return value.to(device, non_blocking=True)

    return {k: move(v) if torch.is_tensor(v) else v for k, v in batch.items()}


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Runtime:
    """Where and how tensors are computed.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Under ``torchrun`` the local rank picks the GPU.
        precision: ``fp32``, ``tf32`` (fp32 with TF32 matrix products on CUDA, Ampere or newer), ``bf16``
            (autocast) or ``fp16`` (autocast with a gradient scaler).
        workers: data-loader worker processes.
        channels_last: lay trained modules and image batches out NHWC (faster convolutions with bf16 on GPUs).
        compile: ``torch.compile`` the trained modules.
    """

    def __init__(self, device: str = "auto", precision: str = "fp32", workers: int = 0, *,
                 channels_last: bool = False, compile: bool = False) -> None:
        if precision not in PRECISIONS:
            raise UsageError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        self.precision = precision
        self.workers = workers
        self.channels_last = channels_last
        self.compile = compile
        if precision == "tf32":
            if self.device.type != "cuda":
                raise UsageError("--precision tf32 is a CUDA setting (TF32 tensor cores, Ampere or newer); use fp32 "
                                 "on this device")
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"device": str(self.device), "device_name": name, "precision": self.precision,
                "world_size": self.world_size, "channels_last": self.channels_last, "compile": self.compile}

    # -- forward / backward ------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor, name: str = "loss") -> None:
        """Backpropagate ``loss`` after checking it is finite (scaled in fp16)."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"{name} is {loss.detach().float().item()} (not finite)")
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply one optimizer's gradients and clear them."""
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    def optimise(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *, where: str, hint: str = "") -> None:
        """One step of a single-optimiser loop: the checked backward, the optimiser's step and the end of the
        iteration. A non-finite loss raises :class:`NonFiniteLossError` saying ``where`` (protocol, layer, step)
        and ``hint`` (what to change)."""
        try:
            self.backward(loss, name=where)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"{exc}; {hint}" if hint else str(exc)) from exc
        self.step(optimizer)
        self.end_step()

    def end_step(self) -> None:
        """Close a training iteration (updates the fp16 loss scale once, however many optimizers stepped)."""
        self.scaler.update()

    # -- modules and data ----------------------------------------------------------------------------------------
    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to train: on the device (NHWC with ``channels_last``), in DistributedDataParallel under
        ``torchrun``, compiled with ``compile``. Its parameters stay ``module``'s own."""
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.distributed and any(p.requires_grad for p in module.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return torch.compile(module) if self.compile else module

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch on the device, laid out as the trained modules want it."""
        return move_batch(batch, self.device, self.channels_last)

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0,
               drop_last: bool = False, repeat: bool = False) -> DataLoader:
        """A seeded loader: the order depends only on (seed, epoch).

        ``batch_size`` is the global batch: under ``torchrun`` a shuffled (training) loader gives each process its
        equal chunk of every batch one process would draw (:class:`~sslbench.distributed.GlobalBatchShards`), so the
        steps and their images do not depend on the number of processes; an unshuffled loader gives every process
        the whole split (:meth:`eval_loader` shards it instead). Batches are
        in pinned memory on CUDA. A split read from the decoded-image cache is built or opened here, with the
        loader's workers decoding, before any worker starts (see :mod:`sslbench.datasets.decoded_cache`).

        ``repeat=True`` (shuffled loaders) is for a caller that iterates one loader over several epochs, as the
        pretext trainer does: with workers, they persist between epochs, and the caller calls
        ``loader.sampler.set_epoch(e)`` before iterating epoch ``e``, which then gives exactly the batches of
        ``loader(..., epoch=e)`` (``epoch`` only sets the first epoch).
        """
        from sslbench.datasets.decoded_cache import materialize_decoded

        materialize_decoded(dataset, self.workers)
        sampler: Any = None
        generator = torch.Generator().manual_seed(dist_ops.epoch_seed(seed, epoch))
        if shuffle and (self.distributed or repeat):
            # batch_size is global: this process's chunk of each single-process batch (all of it on one process),
            # for any epoch set_epoch chooses
            sampler = dist_ops.GlobalBatchShards(len(dataset), batch_size, seed=seed, epoch=epoch,  # type: ignore
                                                 drop_last=drop_last, rank=self.rank, world_size=self.world_size)
            batch_size = sampler.per_process
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            worker_init_fn=_seed_worker if self.workers else None,
            persistent_workers=repeat and shuffle and self.workers > 0,
        )

    def batches(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        """Iterate a loader with every batch moved to the device."""
        for batch in loader:
            yield self.to_device(batch)

    def eval_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """This process's shard of an ordered pass over ``dataset``: on one process every batch in order; under
        ``torchrun`` a contiguous run of whole batches of that order, never padded
        (:class:`~sslbench.distributed.EvalShards`). Put per-image results back together with
        :meth:`gather_rows` and sums with :meth:`all_reduce_sum`."""
        if not self.distributed:
            return self.loader(dataset, batch_size, shuffle=False, seed=0)
        shards = dist_ops.EvalShards(len(dataset), batch_size, rank=self.rank, world_size=self.world_size)
        # A generator as in loader(seed=0): without one, iterating would draw from the global RNG, and what is
        # initialised after evaluation (a probe's weights) would differ from the single-process run.
        return DataLoader(dataset, batch_sampler=shards, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(dist_ops.epoch_seed(0, 0)),
                          worker_init_fn=_seed_worker if self.workers else None)

    def gather_rows(self, rows: torch.Tensor | None, device: torch.device | str | None = None) -> torch.Tensor:
        """Per-image rows of every process's :meth:`eval_loader` shard, concatenated in dataset order on every
        process (on ``device``, default ``rows``' device or the runtime's). ``None``: this process had no batch.
        On one process ``rows`` itself."""
        device = torch.device(device) if device is not None else rows.device if rows is not None else self.device
        if not self.distributed:
            if rows is None:
                raise ValueError("gather_rows: no rows to gather (the split is empty)")
            return rows.to(device)
        return dist_ops.gather_rows(rows, device)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over processes (``value`` itself on one process); integer sums are exact."""
        return dist_ops.all_reduce_sum(value) if self.distributed else value

    def sync_from_main(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every process before a sharded evaluation (DDP
        leaves each process its own batch-norm statistics); a no-op on one process."""
        if self.distributed:
            dist_ops.broadcast_module(module)

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process, for decisions every process must take alike (``value`` itself on
        one process)."""
        return dist_ops.agree(value) if self.distributed else value

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over processes (identity on one process)."""
        return self.all_reduce_sum(value) / self.world_size if self.distributed else value

    def close(self) -> None:
        """End a ``torchrun`` job's process group once every process is done with it. Left to interpreter exit, the
        gloo threads of a process whose peer has already gone can abort it (SIGABRT, "terminate called without an
        active exception") after all its work is written."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()
