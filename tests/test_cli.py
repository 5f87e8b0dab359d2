"""The front door: `gradstep demo`, its options and errors, and the README's commands."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradstep import demo
from gradstep.cli import main

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAS_SCHEDULERS = importlib.util.find_spec("gradstep.lr_scheduler") is not None


def assert_runs_match(result: demo.DemoResult) -> None:
    """gradstep and torch.optim trained the same model to the same weights (float32 tolerance)."""
    gs, th = result.runs
    assert gs.final_state.keys() == th.final_state.keys()
    for key in gs.final_state:
        torch.testing.assert_close(gs.final_state[key], th.final_state[key], rtol=1e-5, atol=1e-6, msg=key)
    assert result.max_param_diff is not None and result.max_param_diff < 1e-5
    torch.testing.assert_close(torch.tensor(gs.losses), torch.tensor(th.losses), rtol=1e-5, atol=1e-6)
    assert gs.test_accuracy == pytest.approx(th.test_accuracy, abs=1 / result.n_test)


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "sub" / "curves.png"
    result = demo.run_demo(epochs=1, output=out, progress=False)
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert [r.name for r in result.runs] == ["gradstep.AdamW", "torch.optim.AdamW"]
    steps = -(-result.n_train // result.batch_size)
    assert all(len(r.losses) == steps for r in result.runs)
    assert_runs_match(result)
    gs = result.runs[0]
    assert gs.test_accuracy > 0.8  # one epoch of AdamW already learns the digits
    assert gs.losses[-1] < gs.losses[0]
    assert gs.mean_step_time_s > 0


def test_cli_prints_table(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--epochs", "1", "--optimizer", "adam", "--no-progress", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in ("gradstep.Adam ", "torch.optim.Adam ", "final train loss", "test accuracy",
                     "mean step time", "max |parameter difference|", str(out)):
        assert expected in text
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_no_compare(tmp_path, capsys):
    out = tmp_path / "solo.png"
    assert main(["demo", "--epochs", "1", "--no-compare", "--no-progress", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gradstep.AdamW" in text and "torch.optim" not in text
    assert out.exists()


@pytest.mark.parametrize("name", demo.demo_optimizers())
def test_every_optimizer_matches_torch(name, tmp_path):
    result = demo.run_demo(name, epochs=1, seed=1, output=tmp_path / "c.png", progress=False)
    if getattr(torch.optim, name, None) is None:
        assert len(result.runs) == 1 and result.notes
    else:
        assert_runs_match(result)


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "step"])
@pytest.mark.parametrize("name", ["AdamW", "Adagrad"])  # with and without momentum to cycle
def test_schedulers(kind, name, tmp_path, capsys):
    if name not in demo.demo_optimizers():
        pytest.skip(f"gradstep has no {name} yet")
    if not HAS_SCHEDULERS:
        args = ["demo", "--scheduler", kind, "--optimizer", name, "--output", str(tmp_path / "s.png")]
        assert main(args) == 1
        assert "unavailable" in capsys.readouterr().err
        return
    result = demo.run_demo(name, scheduler=kind, epochs=1, output=tmp_path / "s.png", progress=False)
    assert_runs_match(result)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "NoSuchOptimizer"], r"unknown optimizer 'NoSuchOptimizer'; available: .*AdamW"),
        (["--lr", "-0.1"], r"argument --lr: must be a finite number >= 0"),
        (["--lr", "fast"], r"argument --lr: not a number"),
        (["--epochs", "0"], r"argument --epochs: must be at least 1"),
        (["--epochs", "two"], r"argument --epochs: not an integer: 'two'"),
        (["--batch-size", "-4"], r"argument --batch-size: must be at least 1"),
        (["--scheduler", "linear"], r"argument --scheduler: invalid choice: 'linear'"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_are_argparse_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gradstep")
    assert re.search(message, err), err


@pytest.mark.parametrize("name", sorted(set(demo.EXCLUDED) & set(demo.available_optimizers())))
def test_excluded_optimizers_say_why(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--optimizer", name])
    assert exc.value.code == 2
    assert f"{name} cannot run in the demo" in capsys.readouterr().err


def test_missing_dependency_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # makes `import tqdm.auto` fail
    assert main(["demo", "--epochs", "1", "--output", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'gradstep[demo]'" in err and "tqdm" in err
    assert not (tmp_path / "x.png").exists()


def test_python_dash_m_and_console_script():
    proc = subprocess.run(
        [sys.executable, "-m", "gradstep", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--optimizer", "--lr", "--scheduler", "--epochs", "--batch-size", "--seed",
                   "--output", "--no-compare"):
        assert option in proc.stdout
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="gradstep")
    assert script.value == "gradstep.cli:main"


def test_readme_starts_with_the_ci_command():
    """The README's second command is exactly what CI runs, so a newcomer's set-up is tested."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^```(?:bash|sh)\n(.*?)\n```", readme, flags=re.M | re.S)
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert len(commands) >= 2 and commands[1] == ci_command
    assert "gradstep demo" in commands[0] and "torch==2.13.0" in commands[0]
