"""Which implementation runs a colour operation: the compiled CPU kernel (numba) or torch.

Soft-encoding and the 8-bit sRGB -> Lab conversion each have a numba kernel for the CPU and a torch path
(the one CUDA and MPS run, and the differentiable one).  ``backend="auto"`` takes the kernel on CPU and
torch elsewhere; ``"torch"`` forces the torch path on CPU too (the tests check both against the
references); ``"numba"`` insists on the kernel.  The kernels run with torch's intra-op thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

BACKENDS = ("auto", "torch", "numba")


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ValueError naming them."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def uses_kernel(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` on ``device`` means the CPU kernel (``"numba"`` off the CPU is an error)."""
    if device.type != "cpu":
        if check_backend(backend) == "numba":
            raise ValueError(f"the numba back end runs on CPU only; the data is on {device}")
        return False
    return check_backend(backend) != "torch"


def run_kernel(kernel: Callable[..., Any], *args: Any) -> None:
    """Call a parallel numba kernel with torch's intra-op thread count, and leave torch's count as it was.

    numba's OpenMP layer shares torch's OpenMP runtime and leaves its own thread count there.
    """
    import numba

    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        kernel(*args)
    finally:
        torch.set_num_threads(threads)


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fresh tensor; on CPU allocated by numpy, which asks Linux for transparent huge pages.

    The kernels' outputs are large (soft-encoding writes 120 bytes per pixel) and written once: with
    4 KiB pages, their first-touch page faults took about half as long as the soft-encoding kernel itself.
    """
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))
