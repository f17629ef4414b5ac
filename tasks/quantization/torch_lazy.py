"""torch, loaded on first use: the modules that reconstruct run in every process that imports the
targets, and torch takes about a second to import, which `--help` and a refused input never pay.
`torch.<name>` and `F.<name>` (torch.nn.functional) import it the first time one is read."""

from __future__ import annotations

import importlib
from typing import Any


class _Lazy:
    def __init__(self, module: str) -> None:
        self._module_name = module
        self._module: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._module_name)  # heavy: loaded when used
        return getattr(self._module, name)


torch: Any = _Lazy("torch")
F: Any = _Lazy("torch.nn.functional")
