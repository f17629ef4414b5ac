"""Prefect flow: FP32 YOLO ONNX -> ModelOpt INT8 Q/DQ ONNX, smoke-checked and COCO-evaluated.

    python flows/int8.py --demo                       # the bundled demo, end to end
    python flows/int8.py --model M.onnx --calib-images DIR --images DIR --annotations JSON
    python flows/int8.py --config run.yaml --method entropy
    python flows/int8.py --demo --target tensorrt,ort-cpu,openvino   # every INT8 target, side by side
    python flows/int8.py --demo --set ort_cpu.reduce_range=off       # any other setting (--help-all)

The command line of the flow (flows/int8_flow.py): every input is checked first, then the flow runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

# `python flows/int8.py` puts flows/ on the path, not the repository root: add it, so that this file and
# worker processes name the same modules (flows.int8_flow, never a bare module a worker cannot import).
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import RunConfig, build_config, load_yaml_config  # noqa: E402
from tasks.options import OneLineErrors, add_config_options, nest, unknown_option_message  # noqa: E402
from tasks.steps.inputs import check_inputs, input_error_types  # noqa: E402

# The flow's module loads Prefect and its server client (seconds on a 2-core machine): it is imported by
# name once the inputs have passed, as flows/cli.py imports a command's module, so that a refusal costs
# only what its check costs.
FLOW_MODULE = "flows.int8_flow"


def parse_args(argv: list[str] | None = None, prog: str = "python flows/int8.py") -> tuple[Path | None, dict[str, Any]]:
    """Command line -> (config file, values to lay over it). Only options given are set; the options
    are RunConfig's fields (tasks/options.py). `prog`: how the user called it (`yolo-lowbit int8`)."""
    ap = OneLineErrors(prog=prog, description=__doc__.replace("python flows/int8.py", prog),
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 argument_default=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help="YAML file of settings, keys as --help-all lists them "
                                                "(options given here override it)")
    dests = add_config_options(ap, RunConfig)
    ns, extra = ap.parse_known_args(argv)
    if extra:
        said = next((m for t in extra if t.startswith("--") and (m := unknown_option_message(t, RunConfig))), None)
        ap.error(said or f"unrecognized arguments: {' '.join(extra)}")
    values = vars(ns)
    return values.pop("config", None), nest(values, dests)


def _one_line(e: BaseException) -> str:
    # Some messages carry the library's own line breaks (YAML's, pydantic's): a refusal is one line.
    return " ".join(str(e).split())


def main(argv: list[str] | None = None, prog: str = "python flows/int8.py") -> int:
    config_file, values = parse_args(argv, prog)
    try:
        cfg = build_config(load_yaml_config(config_file) if config_file else None, values)
        # Every input is checked before a Prefect server starts: bad input costs seconds, not a server
        # start, and leaves no run folder (the flow's first step checks again for deployments).
        check_inputs(cfg)
    except input_error_types() as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a check failed in a way no check foresaw: still a refusal, not a traceback
        print(f"error: could not check the inputs: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 2
    return importlib.import_module(FLOW_MODULE).run(cfg)


if __name__ == "__main__":
    sys.exit(main())
