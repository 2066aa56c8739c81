"""``torch`` for the merge rules, imported on first use.

The rules in :mod:`atmflow.merging.rules` declare the merge methods, their parameters and their
run-config keys; the run config, ``atmflow validate`` and the ``atmflow merge`` command read those
declarations, and must stay fast (importing torch takes 1-3 s). So a rule module writes
``from atmflow.merging.lazy_torch import torch`` and uses ``torch.where(...)`` as usual: the real
module is imported when a rule first computes something. (A test checks that reading the registry
does not import torch.)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


torch: Any = _LazyModule("torch")
