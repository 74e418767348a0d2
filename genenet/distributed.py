"""Past one machine: a batch's rows (or a fit's starts) split into chunks and solved on Dask workers.

``cluster=`` of :func:`genenet.simulate`, :func:`genenet.steady_state`,
:func:`genenet.find_steady_states` and :func:`genenet.fit` takes

- ``"local"`` (or ``True``): an embedded ``distributed.LocalCluster``, one single-threaded
  worker process per CPU core, started for the call and closed after it (for CPU work: on a
  machine with one GPU, one in-process call already uses all of it);
- a scheduler address (``"tcp://10.0.0.5:8786"``): a running cluster, e.g. one from
  dask-jobqueue on an HPC system;
- a ``distributed.Client`` (or a cluster object with a ``scheduler_address``), used as is.

Each chunk is an ordinary in-process call on the worker for its rows (``rows=`` of the
same function), so a distributed result equals the in-process one row for row. The
shared arguments (the model, the data) are sent to every worker once. Results come back
detached and on the host: gradients do not cross machines.

Needs the ``dask`` extra: ``pip install 'genenet[dask]'``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .rows import to_host

__all__ = ["connect", "map_chunks", "on_cluster", "row_chunks", "uses_cluster"]


def uses_cluster(cluster: Any) -> bool:
    """Whether a ``cluster=`` argument asks for Dask (``None`` and ``False``: compute in-process)."""
    return cluster is not None and cluster is not False


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("cluster= needs dask.distributed; install it with pip install 'genenet[dask]'") from err
    return distributed


@contextmanager
def connect(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster`` (see the module doc); one this opened is closed after.
    ``None`` (or ``False``) gives ``None`` (no cluster: the caller computes in-process)."""
    if not uses_cluster(cluster):
        yield None
        return
    distributed = _distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    own = None
    if cluster is True or (isinstance(cluster, str) and cluster == "local"):
        own = distributed.LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
        target: Any = own
    elif isinstance(cluster, str) and cluster.strip():
        target = cluster
    elif hasattr(cluster, "scheduler_address"):
        target = cluster
    else:
        raise TypeError(f"cluster must be 'local' (or True), a scheduler address such as 'tcp://host:8786', a "
                        f"distributed.Client or a Dask cluster object; got {cluster!r}")
    client = distributed.Client(target)
    try:
        yield client
    finally:
        client.close()
        if own is not None:
            own.close()


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer (rows per task) or None, got {chunk_size!r}")


def row_chunks(n_rows: int, chunk_size: int | None, n_workers: int) -> list[np.ndarray]:
    """Consecutive index chunks of ``n_rows`` rows: ``chunk_size`` each, or by default about four
    per worker thread (load balance against rows of unequal cost)."""
    _check_chunk_size(chunk_size)
    if chunk_size is None:
        chunk_size = max(1, math.ceil(n_rows / (4 * max(n_workers, 1))))
    return [np.arange(i, min(i + chunk_size, n_rows)) for i in range(0, n_rows, int(chunk_size))]


class _Shared:
    """The arguments every chunk shares, scattered once as one object."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs


def _run(fn: Callable[..., Any], shared: _Shared, key: str, chunk: Any) -> Any:
    return to_host(fn(**shared.kwargs, **{key: chunk}))


def map_chunks(fn: Callable[..., Any], chunks: Callable[[int], Sequence[Any]], kwargs: dict[str, Any], *,
               key: str, cluster: Any, progress: bool = False, desc: str = "chunks") -> list[Any]:
    """``[fn(**kwargs, key=c) for c in chunks(n_threads)]`` on the cluster's workers, in order.

    ``chunks`` is called with the cluster's worker thread count and returns the chunks
    (row indices, starts...). An exception in a chunk is raised here as it was raised there.
    """
    distributed = _distributed()
    with connect(cluster) as client:
        threads = sum(client.nthreads().values()) or 1
        parts = list(chunks(threads))
        # a key of its own (hash=False): an equal payload of the previous call may still be being released
        shared = client.scatter(_Shared(kwargs), broadcast=True, hash=False)
        futures = [client.submit(_run, fn, shared, key, c, pure=False) for c in parts]
        index = {f.key: i for i, f in enumerate(futures)}
        out: list[Any] = [None] * len(futures)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(futures), desc=desc, unit="chunk", leave=False)
        try:
            for fut in distributed.as_completed(futures):
                out[index[fut.key]] = fut.result()  # re-raises the chunk's exception
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            client.cancel([*futures, shared])  # a user's cluster keeps no copies of this call's data
    return out


def on_cluster(fn: Callable[..., Any], kwargs: dict[str, Any], *, rows: Any, cluster: Any, chunk_size: int | None,
               progress: bool, desc: str) -> list[Any]:
    """``fn(**kwargs, rows=chunk)`` for chunks of the batch's rows (all, or ``rows``) on ``cluster``:
    the parts of the result, in row order. ``kwargs`` name the batch (``model``, ``perturbations``
    and, where given, ``x0``, ``params``); arguments are checked before a cluster is reached."""
    from .batch import check_rows, count_rows

    _check_chunk_size(chunk_size)
    n = count_rows(kwargs["model"], kwargs["perturbations"], kwargs.get("x0"), kwargs.get("params"))
    selected = np.arange(n) if rows is None else check_rows(rows, n)
    if len(selected) == 0:
        return [fn(**kwargs, rows=selected)]
    return map_chunks(fn, lambda threads: [selected[c] for c in row_chunks(len(selected), chunk_size, threads)],
                      kwargs, key="rows", cluster=cluster, progress=progress, desc=desc)
