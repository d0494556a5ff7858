"""The run lifecycle through the CLI under bad input and faults: refused resumes and overwrites change
nothing, every refusal is one line, full disks, NaN and unsafe checkpoints, Ctrl-C, stale files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _tiny_run import TINY as _TINY

from pyro_decomp.cli import main
from pyro_decomp.train import load_checkpoint

# tiny sizes, and no figures (seconds per run)
TINY = [*_TINY, "eval.figures=false"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-decomp: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def run(tmp_path, capsys):
    """A finished tiny run (20 steps)."""
    path = tmp_path / "run"
    assert main(["run", "fig3-pinwheel", "--smoke", "--out", str(path), "--no-progress", *TINY]) == 0
    capsys.readouterr()
    return path


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_failed_resume_writes_nothing(run, capsys):
    before = _snapshot(run)
    assert main(["run", "--resume", str(run), "networks.hidden_dim=50", "train.steps=30"]) == 2
    err = _one_line_error(capsys)
    assert "does not fit the model" in err and "[100, 2] there and [50, 2] here" in err
    assert _snapshot(run) == before  # config.yaml, checkpoints and logs untouched
    # so eval and a plain --resume still work
    assert main(["eval", str(run)]) == 0
    assert main(["run", "--resume", str(run), "train.steps=25", "--no-progress"]) == 0
    assert load_checkpoint(run)["step"] == 25


def test_resume_to_fewer_steps_is_refused_naming_both(run, capsys):
    before = _snapshot(run)
    assert main(["run", "--resume", str(run), "train.steps=5"]) == 2
    err = _one_line_error(capsys)
    assert "already at step 20" in err and "train.steps=5" in err and "nothing to train" in err
    assert _snapshot(run) == before


def test_failed_overwrite_keeps_the_run(run, capsys):
    before = _snapshot(run)
    # the dSprites file is read only when the experiment is built: that must happen before any deletion
    argv = ["run", "thesis-5.6", "--smoke", "--out", str(run), "--overwrite", "data.npz=/nonexistent"]
    assert main(argv) == 2
    assert "/nonexistent" in _one_line_error(capsys)
    assert _snapshot(run) == before
    # a pinwheel run has no data file to read: data.npz there is a config error, also before any deletion
    assert main(["run", "fig3-pinwheel", "--out", str(run), "--overwrite", "data.npz=/nonexistent"]) == 2
    assert "unknown config key 'data.npz' for data 'pinwheel'" in _one_line_error(capsys)
    assert _snapshot(run) == before


def test_overwrite_removes_the_old_analysis(run):
    (run / "analysis").mkdir()
    (run / "analysis" / "amortisation.json").write_text("{}")
    assert main(["run", "fig3-pinwheel", "--smoke", "--out", str(run), "--overwrite", "--no-progress", *TINY]) == 0
    assert not (run / "analysis").exists()


def test_eval_of_a_mismatched_or_nan_checkpoint_is_one_line(run, capsys):
    config = run / "config.yaml"
    text = config.read_text()
    config.write_text(text.replace("hidden_dim: 100", "hidden_dim: 50"))
    assert main(["eval", str(run)]) == 2
    assert "does not fit the model" in _one_line_error(capsys)
    config.write_text(text)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["module"]["decoder.net.0.weight"].fill_(float("nan"))
    torch.save(state, run / "checkpoint.pt")
    assert main(["eval", str(run)]) == 2
    assert "non-finite parameters ('decoder.net.0.weight')" in _one_line_error(capsys)
    before = _snapshot(run)
    assert main(["run", "--resume", str(run), "train.steps=30"]) == 2  # a NaN checkpoint of an older version
    assert "non-finite parameters" in _one_line_error(capsys)
    assert _snapshot(run) == before


def test_eval_and_analyse_of_damaged_run_dirs(run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "is not a run directory: it has no config.yaml" in _one_line_error(capsys)
    (tmp_path / "afile").write_text("x")
    assert main(["analyse", str(tmp_path / "afile")]) == 2
    assert "is not a run directory" in _one_line_error(capsys)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    assert main(["eval", str(run)]) == 2
    assert "corrupt or truncated" in _one_line_error(capsys)
    (run / "config.yaml").write_text("train: {steps: [1, 2\n")
    assert main(["eval", str(run)]) == 2
    assert "config.yaml: not valid YAML" in _one_line_error(capsys)
    (run / "config.yaml").unlink()
    assert main(["eval", str(run)]) == 2
    assert "has a checkpoint but no config.yaml" in _one_line_error(capsys)


def test_run_without_checkpoint_says_how_to_start_again(run, capsys):
    # as left by a kill before the first checkpoint was written
    (run / "checkpoint.pt").unlink()
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    assert main(["run", "--resume", str(run)]) == 2
    err = _one_line_error(capsys)
    assert "holds no checkpoint" in err
    command = err.split("Start it again from its saved config: ")[1].split()
    assert command[:2] == ["pyro-decomp", "run"]
    assert main([*command[1:], "--no-progress"]) == 0  # the suggested command works as printed
    assert load_checkpoint(run)["step"] == 20
    steps = [json.loads(line)["step"] for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the earlier attempt's log lines were dropped


def test_full_disk_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save_until_full(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step", 0) >= 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_full)
    out = tmp_path / "run"
    assert main(["run", "fig3-pinwheel", "--smoke", "--out", str(out), "--no-progress", *TINY]) == 2
    err = _one_line_error(capsys)
    assert "the disk is full" in err and str(out / "checkpoints" / "step_00000020.pt") in err
    assert load_checkpoint(out)["step"] == 10
    assert not list(out.rglob("*.tmp"))


def test_unsafe_checkpoint_is_refused_as_unsafe(run, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(run / "pwned"),))

    torch.save({"format": 1, "step": 5, "module": Payload()}, run / "checkpoint.pt")
    assert main(["run", "--resume", str(run), "train.steps=30"]) == 2
    err = _one_line_error(capsys)
    assert "refused as unsafe" in err and "corrupt" not in err and "weights_only" not in err
    assert not (run / "pwned").exists()


def test_analyse_prints_the_reports_warnings(run, tmp_path, capsys, monkeypatch):
    # a local optimum worse than the encoder is a warning in amortisation.json; the CLI must show it
    report = tmp_path / "amortisation.json"
    report.write_text(json.dumps({"warnings": ["datapoint 3: local ELBO below the encoder's by 0.9 nats"]}))
    monkeypatch.setattr("pyro_decomp.analysis.analyse_run", lambda *a, **k: {"amortisation": report})
    assert main(["analyse", str(run), "--out", str(tmp_path / "an"), "--nuts", "0"]) == 0
    assert "warning: datapoint 3: local ELBO below the encoder's by 0.9 nats" in capsys.readouterr().err


def test_analyse_refuses_to_write_into_a_run(run, capsys):
    before = _snapshot(run)
    assert main(["analyse", str(run), "--out", str(run), "--nuts", "0"]) == 2
    assert "is a run directory; analyse would replace its posterior.nc" in _one_line_error(capsys)
    assert _snapshot(run) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "fig3-pinwheel", "train.seed=99999999999999999999"], "train.seed: 99999999999999999999 is too large"),
        (["run", "fig3-pinwheel", "train.seed=4294967296"], "train.seed: must be an integer in [0, 2**32 - 1]"),
        (["run", "fig3-pinwheel", "eval.seed=-1"], "eval.seed: must be an integer in"),
        (["run", "fig3-pinwheel", "networks.hidden_dim=99999999999999999999"], "networks.hidden_dim: 9999999999999999"),
        (["run", "fig3-pinwheel", "eval.grid_size=100000"], "eval.grid_size: must be in [8, 4096], got 100000"),
        (["run", "fig3-pinwheel", "id=../../evil"], "id: '../../evil' is not a valid run id"),
        (["run", "fig3-pinwheel", "id="], "id: '' is not a valid run id"),
        (["run", "fig3-pinwheel", "--out", ""], "--out is empty"),
        (["run", "fig3-pinwheel", "--out", "afile"], "'afile' is a file, not a directory"),
        (["run", "fig3-pinwheel", "--out", "afile/run"], "'afile' is a file"),
        (["analyse", "x", "--out", ""], "--out is empty"),
        (["sweep", "fig3-pinwheel-grid", "--out", " "], "--out is empty"),
        (["sweep", "fig3-pinwheel-grid", "--out", "afile"], "--out 'afile' is a file"),
        (["run", "bad.yaml"], "bad.yaml: not valid YAML (expected ',' or '}'"),
        (["run", "--resume", "afile"], "--resume takes a run directory or a checkpoint .pt file"),
        (["run", "--resume", ""], "--resume is empty"),
    ],
    ids=["seed", "seed-32bit", "eval-seed", "huge-int", "grid-size", "id-escape", "id-empty", "out-empty", "out-file",
         "out-under-file", "analyse-out", "sweep-out", "sweep-out-file", "yaml", "resume-file", "resume-empty"],  # fmt: skip
)
def test_more_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "bad.yaml").write_text("id: x\nconfig:\n  model: {beta: 0.3\n  train: {steps: 2}\n")
    assert main(argv) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    "error, message",
    [
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: ..."),
         "out of memory"),
        (MemoryError(), "out of memory"),
        (OverflowError("int too big to convert"), "a number in the config is too large (int too big to convert)"),
    ],
    ids=["torch", "numpy", "overflow"],
)  # fmt: skip
def test_resource_errors_are_one_line(tmp_path, capsys, monkeypatch, error, message):
    import pyro_decomp.runner as runner

    def huge(cfg):
        raise error

    monkeypatch.setattr(runner, "build_experiment", huge)
    assert main(["run", "fig3-pinwheel", "--out", str(tmp_path / "r"), "networks.hidden_dim=100000000000"]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == "pyro-decomp 0.1.0"


def test_ctrl_c_from_the_terminal_saves_the_step_and_names_the_resume_command(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    over = [*TINY, "train.steps=100000", "train.checkpoint_every=100000", "train.log_every=1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_decomp", "run", "fig3-pinwheel", "--out", "run", "--no-progress", *over],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    log = tmp_path / "run" / "logs" / "train.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # the interrupt did not stop it: do not leave it running
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "Continue with: pyro-decomp run --resume run" in err
    step = load_checkpoint(tmp_path / "run")["step"]
    assert step >= 5 and f"after step {step}" in err  # the interrupted step was finished and saved


def test_stale_temp_files_are_cleaned_on_resume(run):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = run / "checkpoints" / f".step_00000020.pt.{int(proc.stdout)}.tmp"  # its process has exited
    stale.write_bytes(b"\0" * 1000)
    assert main(["run", "--resume", str(run), "train.steps=22", "--no-progress"]) == 0
    assert not stale.exists()
