"""``atmflow validate`` checks data and weights up front: each problem exits non-zero within seconds, naming
the task or key, the path and what to do; ``--run-config`` takes a TOML file as ``flwr run`` does."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from testkit.own_data import image_folder, write_task_file

from atmflow.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _imports_done() -> None:
    """The CLI's fixed cost (importing torch, torchvision, scikit-learn, pandas) is paid once here, so that
    each test times the checks themselves; :func:`test_cli_process_fails_within_ten_seconds` times a whole
    process."""
    import sklearn.datasets  # noqa: F401
    import torchvision.models  # noqa: F401


def _validate(tmp_path: Path, tasks: dict[str, dict[str, object]], extra: str = "",
              names: str = "") -> tuple[int, str]:
    tf = write_task_file(tmp_path / "tasks.toml", tasks)
    names = names or ",".join([*tasks, "digits"])
    overrides = f"task-file='{tf}' tasks='{names}' train-size=0 test-size=0 {extra}"
    start = time.monotonic()
    code = main(["validate", "--project", str(ROOT), "--run-config", overrides])
    assert time.monotonic() - start < 10
    return code, ""


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], tasks: dict[str, dict[str, object]],
         extra: str = "", names: str = "") -> tuple[int, str]:
    code, _ = _validate(tmp_path, tasks, extra, names)
    out = capsys.readouterr()
    return code, out.out + out.err


def _csv(folder: Path, train: dict[str, list[object]], test: dict[str, list[object]]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame(train).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(test).to_csv(folder / "test.csv", index=False)
    return folder


def test_ready_run_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_folder(tmp_path / "shapes", {"circle": 4, "square": 4}, test=2)
    code, out = _run(tmp_path, capsys, {"shapes": {"modality": "image", "source": "shapes"}})
    assert code == 0, out
    assert "task 'shapes': 2 classes, 8 train / 4 test examples" in out and "ready to run" in out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-folder", ["task 'mine'", "no folder", "create it or fix the path"]),
        ("missing-column", ["task 'mine'", "no column(s) ['text']", "text-column / label-column"]),
        ("one-class", ["task 'mine'", "1 class(es)", "at least 2"]),
        ("empty-test", ["task 'mine'", "the test split", "is empty"]),
        ("classes-mismatch", ["task 'mine'", "label 'maybe'", "not one of the classes ['no', 'yes']"]),
    ],
)
def test_data_problems_exit_one_naming_task_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     case: str, expected: list[str]) -> None:
    root = tmp_path / "mine"
    table: dict[str, object] = {"modality": "image", "source": str(root)}
    if case == "missing-column":
        _csv(root, {"sentence": ["a", "b"], "label": [0, 1]}, {"sentence": ["c"], "label": [1]})
        table = {"modality": "text", "source": str(root)}
    elif case == "one-class":
        image_folder(root, {"a": 3}, test=1)
    elif case == "empty-test":
        _csv(root, {"text": ["a", "b"], "label": [0, 1]}, {"text": [], "label": []})
        table = {"modality": "text", "source": str(root), "classes": ["no", "yes"]}
    elif case == "classes-mismatch":
        _csv(root, {"text": ["a", "b", "c"], "label": ["no", "yes", "maybe"]}, {"text": ["c"], "label": ["no"]})
        table = {"modality": "text", "source": str(root), "classes": ["no", "yes"]}
    names = "mine,rt-polarity" if table["modality"] == "text" else ""
    extra = "model-family='hf-text'" if names else ""
    code, out = _run(tmp_path, capsys, {"mine": table}, extra, names)
    assert code == 1, out
    for text in expected:
        assert text in out, out
    if case != "missing-column":
        assert str(root) in out


def test_unknown_model_exits_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_folder(tmp_path / "shapes", {"circle": 3, "square": 3}, test=1)
    code, out = _run(tmp_path, capsys, {"shapes": {"modality": "image", "source": "shapes"}}, "model='resnet-9'")
    assert code == 1
    assert "model-family='mobilenet-v2' model='resnet-9'" in out and "has one model" in out


def test_misspelt_task_suggests_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_folder(tmp_path / "shapes", {"circle": 3, "square": 3}, test=1)
    code, out = _run(tmp_path, capsys, {"shapes": {"modality": "image", "source": "shapes"}},
                     names="shapes,digitz")
    assert code == 2
    assert "unknown task 'digitz' (did you mean 'digits'?)" in out


def test_run_config_toml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_folder(tmp_path / "shapes", {"circle": 3, "square": 3}, test=1)
    tf = write_task_file(tmp_path / "tasks.toml", {"shapes": {"modality": "image", "source": "shapes"}})
    run_config = tmp_path / "run.toml"
    run_config.write_text(f'task-file = "{tf}"\ntasks = "shapes,digits"\ntrain-size = 0\ntest-size = 0\n'
                          'strategy = "ta"\n')
    assert main(["validate", "--project", str(ROOT), "--run-config", str(run_config)]) == 0
    assert "strategy=oneshot, tasks=shapes,digits" in capsys.readouterr().out
    run_config.write_text('tasks = "shapes,digits"\n')  # no task-file: shapes is unknown
    assert main(["validate", "--project", str(ROOT), "--run-config", str(run_config)]) == 2


def test_cli_process_fails_within_ten_seconds(tmp_path: Path) -> None:
    """Timed as CPU seconds of the process (user + system), which do not grow when other work shares the
    machine's cores; on an idle machine the wall time is about the same."""
    import resource
    import subprocess
    import sys

    tf = write_task_file(tmp_path / "tasks.toml", {"a": {"modality": "image", "source": str(tmp_path / "nope")},
                                                   "b": {"modality": "image", "source": str(tmp_path / "nope")}})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "atmflow.cli", "validate", "--project", str(ROOT), "--run-config",
                           f"task-file='{tf}' tasks='a,b'"], capture_output=True, text=True, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    took = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert proc.returncode == 1 and f"no folder {tmp_path / 'nope'}" in proc.stderr
    assert took < 10, f"validate took {took:.1f} CPU seconds"


def test_relative_task_file_and_output_dir_are_in_the_app_folder(tmp_path: Path) -> None:
    from atmflow.app_config import anchored_run_config, parse_overrides, resolve_config

    image_folder(tmp_path / "app" / "shapes", {"circle": 3, "square": 3}, test=1)
    write_task_file(tmp_path / "app" / "tasks.toml", {"shapes": {"modality": "image", "source": "shapes"}})
    (tmp_path / "app" / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    app = tmp_path / "app"
    cfg = resolve_config(app, "task-file='tasks.toml' tasks='shapes,digits'")
    assert cfg.task_file == str(app / "tasks.toml") and cfg.output_dir == str(app / "outputs")
    passed = parse_overrides(anchored_run_config(app, "task-file='tasks.toml' tasks='shapes,digits'"))
    assert passed == {"task-file": str(app / "tasks.toml"), "tasks": "shapes,digits",
                      "output-dir": str(app / "outputs")}
    assert anchored_run_config(app, "output-dir='/abs/out'") == "output-dir='/abs/out'"
