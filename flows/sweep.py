"""Prefect flow `yolo-sweep`: several INT8 runs compared in one table, each child a flow run of a
deployment (default `yolo-int8/demo-int8`) started with `run_deployment` on that deployment's work
pool, so every worker of the pool, on any machine, takes its share.

    prefect deployment run yolo-sweep/demo-sweep          # the demo, two children (see prefect.yaml)

The children write their run folders under `run_root`, which every worker must mount (the sweep
reads their summary.json back); a comparison table is the sweep's markdown artifact and return value.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python flows/sweep.py` puts flows/ first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.common import offline_defaults  # noqa: E402

offline_defaults()

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from tasks.sweep import SweepConfig, child_configs, child_row, sweep_markdown  # noqa: E402

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@flow(name="yolo-sweep")
def sweep_flow(sweep: SweepConfig) -> dict[str, Any]:
    """Start every child at once on the work pool, wait for all, compare them."""
    logger = get_run_logger()
    sweep_id = flow_run.name or time.strftime("%Y-%m-%d_%H-%M-%S")
    children = child_configs(sweep, sweep_id)
    started = {name: run_deployment(name=sweep.deployment, parameters={"config": values}, timeout=0,
                                    flow_run_name=f"{sweep_id}-{name}")
               for name, values in children.items()}
    logger.info("started %d children of %s: %s", len(started), sweep.deployment,
                ", ".join(f"{n} ({fr.id})" for n, fr in started.items()))
    states: dict[str, str] = {}
    deadline = time.monotonic() + sweep.timeout_s
    with get_client(sync_client=True) as client:
        while len(states) < len(started):
            for name, fr in started.items():
                if name not in states:
                    state = client.read_flow_run(fr.id).state
                    if state is not None and state.type.value in TERMINAL:
                        states[name] = state.type.value
                        logger.info("child %s: %s", name, state.type.value)
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep children not finished after {sweep.timeout_s:g} s: "
                                   f"{sorted(set(started) - set(states))}")
            time.sleep(1)
    rows = [child_row(name, children[name], states[name]) for name in started]
    table = sweep_markdown(rows)
    create_markdown_artifact(markdown=f"# Sweep {sweep_id}\n\n{table}", key="yolo-sweep",
                             description=f"{len(rows)} children of {sweep.deployment}")
    logger.info("sweep %s\n%s", sweep_id, table)
    failed = [n for n, st in states.items() if st != "COMPLETED"]
    if failed:
        raise RuntimeError(f"sweep children did not complete: {', '.join(f'{n} ({states[n]})' for n in failed)}")
    return {"sweep": sweep_id, "children": rows}
