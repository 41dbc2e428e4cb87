"""What data parallelism needs beyond DistributedDataParallel: who sees which images, and exact reductions.

Training (:class:`GlobalBatchShards`). ``--batch-size`` is the GLOBAL batch. Under ``torchrun`` each step's global
batch is exactly the one a single process would draw at the same (seed, epoch): the single-process loader's own
shuffle is replayed and each global batch is cut into ``world_size`` contiguous chunks, one per process. With DDP
averaging the gradients, a step sees the same images as on one process; only per-process batch-norm statistics and
float summation order differ. (torch's ``DistributedSampler`` draws its own permutation, so a 2-process run would
see other batches than a 1-process run, and it pads the split with duplicates.)

Evaluation (:class:`EvalShards`). Each process takes a contiguous run of whole batches of the single-process order,
without padding: every image is computed once, in the very batch it would be computed in on one process, so per-image
outputs are the single-process ones. :func:`gather_rows` concatenates per-process rows in rank order, which is the
original order; :func:`all_reduce_sum` sums (int64 confusion matrices stay exact); :func:`broadcast_module` gives every
process rank 0's weights and batch-norm statistics before it evaluates its shard; :func:`agree` makes every process
take rank 0's decision (train, reuse or skip; read a cache or compute), so no process waits in a collective the others
never enter.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from sslbench.errors import UsageError

__all__ = ["epoch_seed", "GlobalBatchShards", "EvalShards", "gather_rows", "all_reduce_sum", "broadcast_module",
           "agree"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a loader's generator at (seed, epoch): its shuffle depends on nothing else."""
    return seed * 100_003 + epoch


class GlobalBatchShards(Sampler[int]):
    """This process's chunk of every global training batch, in order; batch it by :attr:`per_process`.

    The global batches are those of ``DataLoader(range(size), batch_size, shuffle=True,
    generator=Generator().manual_seed(epoch_seed(seed, epoch)), drop_last=drop_last)``: the single-process loader of
    :meth:`sslbench.runtime.Runtime.loader` draws its batches from the same sampler and generator, so they match
    index for index. ``batch_size`` must divide by ``world_size``: every process then takes ``per_process``
    consecutive images of each batch (rank r the r-th run), equal chunks whose mean gradients DDP averages into the
    global batch's mean. A last, smaller batch (``drop_last=False``) is cut into near-equal chunks (sizes differ by
    at most one, so a DataLoader batching by ``per_process`` keeps each as one batch); if it has fewer images than
    processes it is left out on every process, since an empty chunk would leave one process without a step.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, epoch: int, drop_last: bool, rank: int,
                 world_size: int) -> None:
        if batch_size < world_size or batch_size % world_size:
            raise UsageError(f"batch size {batch_size} cannot be shared by the {world_size} processes of this "
                             f"torchrun job: batch sizes are global, give a multiple of {world_size}")
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, epoch
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.per_process = batch_size // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[torch.Tensor]:
        """The single-process batches of indices, in order (a tail smaller than the process count left out)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        loader = DataLoader(range(self.size), batch_size=self.batch_size, shuffle=True, generator=generator,
                            drop_last=self.drop_last)
        return [batch for batch in loader if batch.numel() >= self.world_size]

    def __iter__(self) -> Iterator[int]:
        for batch in self.global_batches():
            yield from batch.tensor_split(self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        tail = rest if not self.drop_last and rest >= self.world_size else 0
        return full * self.per_process + len(torch.arange(tail).tensor_split(self.world_size)[self.rank])


class EvalShards(Sampler[list[int]]):
    """Batch sampler of one process's contiguous run of whole batches of the ordered split (no padding).

    The split's ``ceil(size / batch_size)`` batches (the single-process ones) are cut into ``world_size``
    contiguous runs with sizes differing by at most one batch; a process may get none when there are fewer batches
    than processes.
    """

    def __init__(self, size: int, batch_size: int, *, rank: int, world_size: int) -> None:
        num_batches = -(-size // batch_size)
        per, extra = divmod(num_batches, world_size)
        first = rank * per + min(rank, extra)
        self.batches = range(first, first + per + int(rank < extra))
        self.size, self.batch_size = size, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for index in self.batches:
            yield list(range(index * self.batch_size, min(self.size, (index + 1) * self.batch_size)))

    def __len__(self) -> int:
        return len(self.batches)


def _comm_device(device: torch.device) -> torch.device:
    """Where collectives run: the GPU under NCCL, the CPU under gloo."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Every process's ``rows`` (first axis: images of its :class:`EvalShards` shard) concatenated in rank order,
    on every process, on ``device``. ``None`` means no rows here (a process without batches); the trailing shape and
    dtype then come from the others. Exact for every dtype (bool travels as uint8)."""
    meta = None if rows is None else (int(rows.shape[0]), tuple(rows.shape[1:]), rows.dtype)
    metas: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(metas, meta)
    known = [m for m in metas if m is not None]
    if not known:
        raise ValueError("gather_rows: no process has any rows to gather")
    trailing, dtype = known[0][1], known[0][2]
    if any(m[1] != trailing or m[2] != dtype for m in known):
        raise ValueError(f"gather_rows: processes hold rows of different shapes or dtypes: {known}")
    counts = [0 if m is None else m[0] for m in metas]
    comm = _comm_device(device)
    wire = torch.uint8 if dtype == torch.bool else dtype
    local = torch.zeros((max(counts), *trailing), dtype=wire, device=comm)
    if rows is not None and rows.shape[0]:
        local[:rows.shape[0]] = rows.to(comm, wire)
    buffers = [torch.empty_like(local) for _ in counts]
    dist.all_gather(buffers, local)
    out = torch.cat([buffer[:count] for buffer, count in zip(buffers, counts)])
    return out.to(device=device, dtype=dtype)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over processes (a new tensor on ``value``'s device; integer sums are exact)."""
    comm = _comm_device(value.device)
    total = value.detach().to(comm).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(value.device)


def broadcast_module(module: nn.Module) -> None:
    """Give every process rank 0's parameters and buffers of ``module``, in place.

    DDP keeps parameters equal but not buffers: each process updates its batch-norm running statistics on its own
    chunk after the last broadcast, and rank 0's are the ones its checkpoint holds. Evaluation shards must all be
    computed with those."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            wire = tensor.detach() if tensor.is_contiguous() else tensor.detach().contiguous()
            dist.broadcast(wire, src=0)
            if wire is not tensor:
                tensor.copy_(wire)


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every process (a picklable object)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
