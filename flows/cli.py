"""The `yolo-lowbit` command (pyproject.toml's console script): one subcommand per flow, each with the
same options as `python flows/<flow>.py` (the int8 flow's are RunConfig's fields, tasks/options.py).

    yolo-lowbit int8 --demo                                   # the bundled demo, end to end
    yolo-lowbit int8 --model M.onnx --calib-images DIR --images DIR --annotations JSON
    yolo-lowbit evaluate --model M.onnx --images DIR --annotations JSON
    yolo-lowbit int8 --help                                   # every option of a command
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python flows/cli.py` puts flows/ first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks import __version__  # noqa: E402

# command -> (module whose main(argv, prog) runs it, what it does). A table of names: only the command
# asked for is imported (each flow loads Prefect and its own stack), so `yolo-lowbit --help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "int8": ("flows.int8", "quantize a YOLO ONNX export to INT8 and prove it against FP32 on COCO (the flow)"),
    "evaluate": ("flows.evaluate", "COCO mAP and latency of one YOLO ONNX export (or OpenVINO IR)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: yolo-lowbit COMMAND [options]     (yolo-lowbit COMMAND --help: its options)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n" + __doc__.split("\n\n")[1].rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"yolo-lowbit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose from {', '.join(COMMANDS)} (yolo-lowbit --help)",
              file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[name][0]).main(rest, prog=f"yolo-lowbit {name}")


if __name__ == "__main__":
    sys.exit(main())
