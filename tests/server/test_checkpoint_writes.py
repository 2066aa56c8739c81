"""A run folder that cannot be written mid-run (made read-only, full disk, replaced by a file) stops the run with
one message naming the folder, what was being written and what to do, not a file system traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atmflow.server.checkpoint import load_state, save_checkpoint


def test_a_checkpoint_that_cannot_be_written_says_where_and_what_to_do(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the run folder's parent should be")
    with pytest.raises(RuntimeError) as caught:
        save_checkpoint(blocked / "run", 2, {"w": torch.zeros(2)}, {"config": {}})
    message = str(caught.value)
    assert message.startswith(f"cannot write the checkpoint of round 2 to {blocked / 'run'} (")
    assert "must stay writable" in message and "resume=true" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_checkpoint_is_written_where_the_folder_is_writable(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(2)}, {"config": {}})
    state = load_state(tmp_path / "run")
    assert state is not None and state["round"] == 1 and (tmp_path / "run" / state["weights"]).is_file()
