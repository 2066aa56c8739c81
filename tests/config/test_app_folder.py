"""A relative output-dir under a plain ``flwr run``: taken in the app folder when the ServerApp runs there,
else refused before any work, naming the folder and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from atmflow.app_config import is_app_folder, server_output_dir
from atmflow.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_relative_output_dir_lands_in_the_app_folder(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert is_app_folder(tmp_path, "atmflow/atmflow") and not is_app_folder(tmp_path, "someone/else")
    cfg = server_output_dir(load_config({"output-dir": "outputs"}), "atmflow/atmflow", cwd=tmp_path)
    assert cfg.output_dir == str(tmp_path.resolve() / "outputs")
    absolute = load_config({"output-dir": str(tmp_path / "x")})
    assert server_output_dir(absolute, "atmflow/atmflow", cwd=Path("/")) is absolute


def test_relative_output_dir_outside_the_app_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"output-dir='outputs' is relative.*not the folder of app 'atmflow/atmflow'"
                                          r".*output-dir='\$PWD/outputs'"):
        server_output_dir(load_config({}), "atmflow/atmflow", cwd=tmp_path)
