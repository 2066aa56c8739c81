"""``atmflow merge``: round trips on small checkpoint files, and failures that name the tensor and write nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from atmflow.cli import main
from atmflow.merging import METHODS, merge
from atmflow.merging.cli import parameter_options

State = dict[str, torch.Tensor]


def make_base(seed: int = 0) -> State:
    g = torch.Generator().manual_seed(seed)
    return {"enc.w": torch.randn(6, 4, generator=g), "enc.b": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(10), "head.weight": torch.randn(3, 4, generator=g)}


def finetune(base: State, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 5 for k, v in base.items()}


@dataclass
class Files:
    dir: Path
    base: State
    tuned: list[State]
    paths: list[str]

    @property
    def base_path(self) -> str:
        return str(self.dir / "base.safetensors")


def save_all(folder: Path, prefix: str, states: list[State]) -> list[str]:
    paths = [str(folder / f"{prefix}{i}.safetensors") for i in range(len(states))]
    for path, sd in zip(paths, states, strict=True):
        save_file(sd, path)
    return paths


@pytest.fixture
def files(tmp_path: Path) -> Files:
    base = make_base()
    tuned = [finetune(base, s) for s in (1, 2, 3)]
    save_file(base, tmp_path / "base.safetensors")
    return Files(tmp_path, base, tuned, save_all(tmp_path, "task", tuned))


def vectors(base: State, tuned: list[State], exclude: tuple[str, ...] = ()) -> list[State]:
    return [{k: sd[k] - base[k] for k in base if base[k].is_floating_point() and not any(e in k for e in exclude)}
            for sd in tuned]


def run_merge(files: Files, method: str, *extra: str, out: str = "merged.safetensors") -> tuple[int, Path]:
    target = files.dir / out
    argv = ["merge", "--method", method, "--base", files.base_path, "--finetuned", *files.paths, "--out", str(target),
            *extra]
    return main(argv), target


@pytest.mark.parametrize("method", list(METHODS))
def test_round_trip_equals_the_in_memory_merge(files: Files, method: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_merge(files, method, "--exclude", r"^head\.")
    assert rc == 0
    merged = load_file(out)
    expected = merge(method, files.base, vectors(files.base, files.tuned, exclude=("head.",)))
    assert merged.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k], rtol=0, atol=1e-6, msg=k)
    assert torch.equal(merged["head.weight"], files.base["head.weight"])  # frozen: the base's
    assert torch.equal(merged["bn.num_batches_tracked"], torch.tensor(10))  # not averaged with the 15s
    printed = capsys.readouterr().out
    assert f"merged 2 tensors (28 parameters) of 3 checkpoints with {method}" in printed
    assert "passed through unchanged, not floating point (1): bn.num_batches_tracked" in printed
    assert "passed through unchanged, --exclude (1): head.weight" in printed


def test_options_reach_the_rule(files: Files) -> None:
    rc, out = run_merge(files, "ties", "--k", "0.5", "--lam", "0.7")
    expected = merge("ties", files.base, vectors(files.base, files.tuned), k=0.5, lam=0.7)
    assert rc == 0 and torch.allclose(load_file(out)["enc.w"], expected["enc.w"], atol=1e-6)
    rc, out = run_merge(files, "dare", "--p", "0.5", "--seed", "7", out="dare.safetensors")
    expected = merge("dare", files.base, vectors(files.base, files.tuned), p=0.5, seed=7)
    assert rc == 0 and torch.allclose(load_file(out)["enc.w"], expected["enc.w"], atol=1e-6)


def test_gradient_tatr_reads_one_gradient_file_per_task(files: Files) -> None:
    g = torch.Generator().manual_seed(9)
    grads = [{k: torch.rand(v.shape, generator=g) for k, v in files.base.items() if k.startswith("enc.")}
             for _ in files.paths]
    grad_paths = save_all(files.dir, "grad", grads)
    rc, out = run_merge(files, "tatr", "--trust-fraction", "0.25", "--exclude", "head", "--grads", *grad_paths)
    taus = vectors(files.base, files.tuned, exclude=("head",))
    expected = merge("tatr", files.base, taus, grads=grads, trust_fraction=0.25)
    zero_shot = merge("tatr", files.base, taus, trust_fraction=0.25)
    assert rc == 0 and torch.allclose(load_file(out)["enc.w"], expected["enc.w"], atol=1e-6)
    assert not torch.equal(expected["enc.w"], zero_shot["enc.w"])


@pytest.mark.parametrize(("grad", "message"), [
    ({"enc.w": torch.rand(6, 4)}, "grad2.safetensors: has no gradient for the merged tensor 'enc.b'"),
    ({"enc.w": torch.rand(4, 6), "enc.b": torch.rand(4)}, r"grad2.safetensors: gradient 'enc.w' has shape \(4, 6\)"),
])
def test_bad_gradient_files_are_named(files: Files, grad: State, message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    good = {"enc.w": torch.rand(6, 4), "enc.b": torch.rand(4)}
    paths = save_all(files.dir, "grad", [good, good, grad])
    rc, out = run_merge(files, "tatr", "--exclude", "head", "--grads", *paths)
    assert rc == 2 and re.search(message, capsys.readouterr().err) and not out.exists()


def test_pytorch_state_dict_files_in_and_out(files: Files, tmp_path: Path) -> None:
    torch.save({"state_dict": files.tuned[0]}, tmp_path / "task0.pt")  # nested under "state_dict"
    torch.save(files.tuned[1], tmp_path / "task1.pth")
    out = tmp_path / "merged.pt"
    rc = main(["merge", "--method", "mean", "--base", files.base_path, "--finetuned", str(tmp_path / "task0.pt"),
               str(tmp_path / "task1.pth"), "--out", str(out)])
    expected = merge("mean", files.base, vectors(files.base, files.tuned[:2]))
    merged = torch.load(out, weights_only=True)
    assert rc == 0 and all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)


def corrupt(files: Files, name: str, tensor: torch.Tensor | None) -> None:
    """Rewrite the second fine-tuned file with tensor ``name`` replaced (``None``: removed)."""
    sd = dict(files.tuned[1])
    if tensor is None:
        del sd[name]
    else:
        sd[name] = tensor
    save_file(sd, files.paths[1])


@pytest.mark.parametrize(("name", "tensor", "message"), [
    ("enc.b", None, "task1.safetensors: has no tensor 'enc.b'"),
    ("extra", torch.zeros(2), "task1.safetensors: tensor 'extra' is not in the base"),
    ("enc.w", torch.zeros(4, 6), r"task1.safetensors: tensor 'enc.w' has shape \(4, 6\), the base .* has \(6, 4\)"),
    ("enc.w", torch.zeros(6, 4, dtype=torch.float16), "task1.safetensors: tensor 'enc.w' is torch.float16, the base"),
])
def test_mismatched_files_name_the_tensor_and_write_nothing(files: Files, name: str, tensor: torch.Tensor | None,
                                                            message: str, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt(files, name, tensor)
    before = sorted(files.dir.iterdir())
    rc, out = run_merge(files, "ties")
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)
    assert sorted(files.dir.iterdir()) == before and not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--p", "0.5"], "merge method 'ta' has no parameter 'p'; its parameters: lam"),
    (["--lam", "0.3", "--grads", "g.safetensors"], "1 gradient files for 3 fine-tuned checkpoints"),
    (["--exclude", "("], "exclude pattern '(' is not a regular expression"),
    (["--exclude", "."], "no floating-point tensor is left to merge"),
])
def test_bad_options_fail_before_writing(files: Files, extra: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    method = "tatr" if "--grads" in extra else "ta"
    rc, out = run_merge(files, method, *extra)
    assert rc == 2 and message in capsys.readouterr().err and not out.exists()


def test_missing_input_and_output_folder_are_reported(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    files.paths = [*files.paths, str(files.dir / "nope.safetensors")]
    assert run_merge(files, "ta")[0] == 2 and "nope.safetensors: no such file" in capsys.readouterr().err
    files.paths = files.paths[:-1]
    assert run_merge(files, "ta", out="missing/merged.safetensors")[0] == 2
    assert "the folder" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("junk.safetensors", b"not a safetensors file", "junk.safetensors: not a readable safetensors file"),
    ("junk.pt", b"not a pickle", "junk.pt: not a PyTorch state-dict file"),
])
def test_unreadable_files_are_named(files: Files, name: str, content: bytes, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (files.dir / name).write_bytes(content)
    files.paths = [*files.paths, str(files.dir / name)]
    assert run_merge(files, "ta")[0] == 2 and message in capsys.readouterr().err


def test_a_file_that_is_not_a_state_dict_is_named(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save([torch.zeros(2)], files.dir / "list.pt")
    files.paths = [*files.paths, str(files.dir / "list.pt")]
    assert run_merge(files, "ta")[0] == 2 and "list.pt: holds a list, not a state dict" in capsys.readouterr().err


def test_help_lists_every_method_and_every_parameter_has_an_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    printed = capsys.readouterr().out
    options = set(parameter_options())
    for method, rule in METHODS.items():
        assert f"  {method} " in printed
        assert {p.name for p in rule.params()} <= options


def test_building_the_cli_does_not_import_torch() -> None:
    """``atmflow validate`` must stay fast: the merge subcommand's parser is built without torch."""
    code = ("import sys\nfrom atmflow.cli import main\ntry:\n    main(['merge'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("extra", [["--lam", "nan"], ["--lam", "inf"]])
def test_non_finite_parameters_are_refused(files: Files, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_merge(files, "ta", *extra)
    assert rc == 2 and "lam=" in capsys.readouterr().err and not out.exists()


def test_k_zero_is_refused(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_merge(files, "ties", "--k", "0")
    assert rc == 2 and "k=0" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("which", ["base", "finetuned"])
def test_non_finite_inputs_are_refused_unless_allowed(files: Files, which: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    state = dict(files.base if which == "base" else files.tuned[1])
    state["enc.w"] = state["enc.w"].clone().index_fill_(0, torch.tensor([2]), float("nan"))
    path = files.base_path if which == "base" else files.paths[1]
    save_file(state, path)
    rc, out = run_merge(files, "ta")
    err = capsys.readouterr().err
    assert rc == 2 and "tensor 'enc.w' has non-finite values" in err and Path(path).name in err and not out.exists()
    assert not list(out.parent.glob(".*.tmp"))  # no temporary file left behind
    rc, out = run_merge(files, "ta", "--allow-non-finite")
    assert rc == 0 and torch.isnan(load_file(str(out))["enc.w"]).any()


def test_out_may_not_be_an_input(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    before = Path(files.paths[0]).read_bytes()
    relative = Path(files.paths[0]).relative_to(Path.cwd()) if Path(files.paths[0]).is_relative_to(Path.cwd()) \
        else Path(files.paths[0])
    rc = main(["merge", "--method", "ta", "--base", files.base_path, "--finetuned", *files.paths,
               "--out", str(relative.parent / "." / relative.name)])
    assert rc == 2 and "is also an input" in capsys.readouterr().err
    assert Path(files.paths[0]).read_bytes() == before
