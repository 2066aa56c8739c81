"""Reading the merge registry and validating a run config must not import torch (``atmflow validate`` and
every config check stay fast; the rules import torch lazily, :mod:`atmflow.merging.lazy_torch`)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import atmflow.merging.registry as registry
import atmflow.config as config
assert registry.method_names() and registry.config_params()
cfg = config.load_config({})
assert cfg.operator_params() is not None
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
"""


def test_registry_does_not_import_torch() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
