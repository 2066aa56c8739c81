"""One thread count for every thread pool of a process: torch's and the BLAS / OpenMP libraries'.

Why: float sums are not associative, so a matrix product split over 4 threads can differ in the last
bit from one split over 1 thread, and fine-tuning amplifies such bits into different models. The
thread pools of BLAS (OpenBLAS, MKL) and OpenMP follow ``OMP_NUM_THREADS`` unless told otherwise, and
that variable differs between paths: Ray pins it to the CPUs a client reserves, an in-process run
inherits the shell's. :func:`pin_threads` makes the run config's ``num-threads`` the only thing that
counts, on the clients and on the server (merging, probe heads), so one config gives one model on
every path of one machine. See the README ("Reproducibility") for what can still differ across machines.
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits

_PINNED: dict[str, int] = {}


def pin_threads(n: int) -> None:
    """Limit torch's intra-op pool, its inter-op pool (where still allowed) and every loaded BLAS /
    OpenMP pool to ``n`` threads. Cheap to call again: a library loaded since the last call is limited
    too (threadpoolctl only sees loaded libraries)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # torch allows it once, before any inter-op work; the intra-op pool is what sums
            pass
    threadpool_limits(limits=n)
    _PINNED["threads"] = n


def pinned_threads() -> int:
    """The thread count of the last :func:`pin_threads` in this process (torch's current one if none)."""
    return _PINNED.get("threads", torch.get_num_threads())


def limited(n: int | None = None) -> threadpool_limits:
    """A context that limits the BLAS / OpenMP pools to ``n`` (default: the pinned count) threads while
    it is open, including libraries loaded just before it (e.g. scipy's BLAS under scikit-learn)."""
    return threadpool_limits(limits=n or pinned_threads())
