"""Where a run's steps execute: one table, runner name -> a context manager that opens it.

Each gives a Prefect task runner (None: steps run in the flow's own thread, one after another) used
by flows/int8.py to submit the steps `tasks/pipeline.py` orders. One step per worker process: ModelOpt
patches ONNX Runtime and redirects stderr process-wide, and the peak-memory sampler reads the whole
process, so two steps must never share one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator

from tasks.config import RunConfig


@contextmanager
def sequential(cfg: RunConfig) -> Iterator[Any]:
    yield None


@contextmanager
def process(cfg: RunConfig) -> Iterator[Any]:
    """Prefect's ProcessPoolTaskRunner: `workers` spawned processes on this machine."""
    from prefect.task_runners import ProcessPoolTaskRunner

    with ProcessPoolTaskRunner(max_workers=cfg.workers) as runner:
        yield runner


@contextmanager
def dask(cfg: RunConfig) -> Iterator[Any]:
    """prefect-dask's DaskTaskRunner: the cluster at `dask_address`, or a LocalCluster of `workers`
    single-threaded processes (a worker thread per process: one step at a time in each)."""
    from prefect_dask import DaskTaskRunner  # heavy: loaded when used, not on --help

    if cfg.dask_address:
        runner = DaskTaskRunner(address=cfg.dask_address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1,
                                                "processes": True, "dashboard_address": None})
    with runner:
        # prefect-dask creates its client (and a local cluster) on first use, unguarded: touched here
        # once, before the pipeline's threads submit side by side, or each would start a cluster.
        runner.client  # noqa: B018
        yield runner


RUNNERS: dict[str, Callable[[RunConfig], ContextManager[Any]]] = {
    "sequential": sequential,
    "process": process,
    "dask": dask,
}
