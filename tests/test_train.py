"""Trainer: exact resume, NaN guard, atomic and weights_only checkpoints, logs."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from pyro_decomp.config import load_experiment
from pyro_decomp.runner import _make_trainer, build_experiment
from pyro_decomp.train import (
    CheckpointError,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    load_checkpoint,
    save_checkpoint,
)

# a tiny pinwheel run: 80 points, full batch, α > 0 and β > 0 so every term is exercised
TINY = {
    "data.per_arm": 20,
    "data.test_per_arm": 10,
    "model.alpha": 2.0,
    "model.beta": 0.5,
    "train.progress": False,
    "train.tensorboard": False,
    "train.log_every": 1,
}


def _trainer(run_dir, steps, callbacks=(), **over):
    cfg = load_experiment("fig3-pinwheel", size="smoke", overrides={**TINY, "train.steps": steps, **over})
    exp = build_experiment(cfg)
    return exp, _make_trainer(exp, run_dir, progress=False, callbacks=callbacks)


def _stop_at(step, exc):
    def callback(trainer, s, terms):
        if s == step:
            raise exc

    return callback


@pytest.mark.parametrize(
    "stop_step, exc, ckpt_step",
    [(13, KeyboardInterrupt(), 13), (15, RuntimeError("killed"), 10)],
    ids=["ctrl-c-saves", "crash-resumes-from-last-checkpoint"],
)
def test_resume_is_bit_identical(tmp_path, stop_step, exc, ckpt_step):
    exp_a, full = _trainer(tmp_path / "a", 20, **{"train.checkpoint_every": 10})
    full.fit()
    reference = {k: v.clone() for k, v in exp_a.vae.state_dict().items()}

    _, first = _trainer(tmp_path / "b", 20, callbacks=[_stop_at(stop_step, exc)], **{"train.checkpoint_every": 10})
    with pytest.raises(type(exc)):
        first.fit()
    assert load_checkpoint(tmp_path / "b")["step"] == ckpt_step
    # a fresh process would rebuild everything from the config: new model, new optimiser, new seed
    torch.manual_seed(999)
    exp_c, resumed = _trainer(tmp_path / "b", 20, **{"train.checkpoint_every": 10})
    result = resumed.fit(resume=True)
    assert result["step"] == 20
    state = exp_c.vae.state_dict()
    assert state.keys() == reference.keys()
    for k in reference:
        assert torch.equal(state[k], reference[k]), k
    # the log holds each step once, in order
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "logs" / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_every_parameter_is_trained_and_logged(tmp_path):
    exp, trainer = _trainer(tmp_path, 3, **{"train.tensorboard": True})
    before = {k: v.clone() for k, v in exp.vae.named_parameters()}
    trainer.fit()
    for k, v in exp.vae.named_parameters():
        assert not torch.equal(v, before[k]), f"{k} was not updated"
    rec = json.loads((tmp_path / "logs" / "train.jsonl").read_text().splitlines()[-1])
    assert {"step", "loss", "reconstruction", "kl", "divergence", "weighted_divergence"} <= set(rec)
    assert list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_nan_guard_names_term_and_step_and_keeps_checkpoint(tmp_path):
    def poison(trainer, step, terms):
        if step == 7:
            with torch.no_grad():
                trainer.module.decoder.net[0].weight.fill_(float("nan"))

    _, trainer = _trainer(tmp_path, 20, callbacks=[poison], **{"train.checkpoint_every": 5})
    # step 8 starts from the poisoned state of step 7; the last good checkpoint is the one before it
    with pytest.raises(
        NonFiniteLossError, match=r"the reconstruction term is nan at step 8.*checkpoint\.pt' \(step 5\)"
    ) as info:
        trainer.fit()
    assert (info.value.term, info.value.step) == ("reconstruction", 8)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["module"].values())


def _lr100(tmp_path, **over):
    # lr=100 on the pinwheel: step 1's update is finite, step 2's gradient overflows and the update
    # writes NaN into the parameters and Adam's second moment, while step 2's loss is still finite
    return _trainer(tmp_path, 300, **{"train.lr": 100.0, "train.checkpoint_every": 1, **over})


def test_no_checkpoint_holds_non_finite_parameters(tmp_path):
    _, trainer = _lr100(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"became non-finite in the update of step 2") as info:
        trainer.fit()
    assert info.value.term == "parameters"
    # every checkpoint on disk is finite, parameters and optimiser state alike
    files = [tmp_path / "checkpoint.pt", *sorted((tmp_path / "checkpoints").glob("step_*.pt"))]
    assert [f.name for f in files] == ["checkpoint.pt", "step_00000000.pt", "step_00000001.pt"]
    for f in files:
        state = load_checkpoint(f)
        tensors = list(state["module"].values()) + [
            v for entry in state["optimizer"].values() for per in entry["state"].values() for v in per.values()
        ]
        assert all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t)), f
    # the message names a checkpoint from before the diverging step (not step 1, whose gradient overflows)
    named = re.search(r"the last good checkpoint is '([^']+)' \(step (\d+)\)", str(info.value))
    assert named and named.group(2) == "0", str(info.value)
    assert "pyro-decomp run --resume" in str(info.value) and "train.lr=10" in str(info.value)
    # ... and it resumes to a finite run at a lower learning rate
    _, resumed = _trainer(tmp_path, 30, **{"train.lr": 1e-3, "train.checkpoint_every": 10})
    result = resumed.fit(resume=named.group(1))
    assert result["step"] == 30 and math.isfinite(result["terms"]["loss"])
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path)["module"].values())


def test_ctrl_c_inside_a_step_finishes_it_saves_and_resumes_exactly(tmp_path):
    exp_a, full = _trainer(tmp_path / "a", 20, **{"train.checkpoint_every": 10})
    full.fit()
    reference = {k: v.clone() for k, v in exp_a.vae.state_dict().items()}

    _, first = _trainer(tmp_path / "b", 20, **{"train.checkpoint_every": 10})
    step = first.svi.step

    def interrupted_step(*args, **kwargs):
        if first.step == 12:  # a real SIGINT, delivered while step 13 is running
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    first.svi.step = interrupted_step
    with pytest.raises(TrainingInterrupted, match=r"interrupted after step 13; saved .*checkpoint\.pt.*--resume"):
        first.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert load_checkpoint(tmp_path / "b")["step"] == 13
    exp_c, resumed = _trainer(tmp_path / "b", 20, **{"train.checkpoint_every": 10})
    assert resumed.fit(resume=True)["step"] == 20
    for k, v in exp_c.vae.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_second_ctrl_c_aborts_the_step_and_saves_nothing(tmp_path):
    _, trainer = _trainer(tmp_path, 20, **{"train.checkpoint_every": 10})
    step = trainer.svi.step

    def twice(*args, **kwargs):
        if trainer.step == 12:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second one raises inside the step
        return step(*args, **kwargs)

    trainer.svi.step = twice
    with pytest.raises(TrainingInterrupted, match=r"inside a step.*step 10"):
        trainer.fit()
    assert load_checkpoint(tmp_path)["step"] == 10


def test_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, trainer = _trainer(tmp_path, 20, **{"train.checkpoint_every": 10})
    real_save = torch.save

    def save_until_full(obj, f, *a, **k):
        if obj["step"] >= 20:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_full)
    full = r"the disk is full.*step_00000020\.pt'; earlier checkpoints are untouched"
    with pytest.raises(OSError, match=full) as info:
        trainer.fit()
    assert info.value.errno == errno.ENOSPC
    assert load_checkpoint(tmp_path)["step"] == 10  # the previous checkpoint survives, loadable
    assert not list(tmp_path.rglob("*.tmp"))


def test_unsafe_checkpoint_is_refused_as_unsafe(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "step": 1, "module": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused as unsafe.*system") as info:
        load_checkpoint(path)
    assert "corrupt" not in str(info.value) and "weights_only" not in str(info.value)


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)  # a process that has exited
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / f".checkpoint.pt.{dead}.tmp", tmp_path / "checkpoints" / f".step_00000010.pt.{dead}.tmp"]
    live = tmp_path / f".checkpoint.pt.{os.getppid()}.tmp"  # the test runner's parent is alive
    for f in (*stale, live):
        f.write_bytes(b"x" * 100)
    _, trainer = _trainer(tmp_path, 2)
    trainer.fit()
    assert not any(f.exists() for f in stale) and live.exists()


def test_checkpoint_loads_with_weights_only(tmp_path):
    _, trainer = _trainer(tmp_path, 2)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and state["config"]["train"]["steps"] == 2
    assert {"module", "optimizer", "elbo", "rng", "step", "format"} <= set(state)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, damage):
    _, trainer = _trainer(tmp_path, 4, **{"train.checkpoint_every": 2})
    trainer.fit()
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint" * 10)
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    match = (
        r"checkpoint\.pt.*(corrupt or truncated|not a pyro-decomp checkpoint).*earlier checkpoint.*step_0000000[24]\.pt"
    )
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="start the run afresh"):
        _trainer(tmp_path, 6)[1].fit(resume=True)
    # the earlier checkpoint named in the message works
    _, again = _trainer(tmp_path, 6)
    assert again.fit(resume=tmp_path / "checkpoints" / "step_00000002.pt")["step"] == 6


def test_failed_write_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"format": 1, "step": 1, "module": {}, "optimizer": {}, "elbo": {}, "rng": {}}, path)
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": 1, "step": 2}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_trainer_validates_arguments(tmp_path):
    exp, _ = _trainer(tmp_path, 1)
    args = (exp.vae, exp.vae.model, exp.vae.guide, exp.elbo, exp.x_train)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        Trainer(*args, run_dir=tmp_path, steps=-1)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda'"):
        Trainer(*args, run_dir=tmp_path, steps=1, device="tpu")
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        Trainer(object(), *args[1:], run_dir=tmp_path, steps=1)


def test_minibatches_resume_exactly(tmp_path):
    over = {"train.batch_size": 30, "train.checkpoint_every": 4}
    exp_a, full = _trainer(tmp_path / "a", 9, **over)
    full.fit()
    _, first = _trainer(tmp_path / "b", 9, callbacks=[_stop_at(6, RuntimeError("x"))], **over)
    with pytest.raises(RuntimeError):
        first.fit()
    exp_b, resumed = _trainer(tmp_path / "b", 9, **over)
    resumed.fit(resume=True)
    for (k, a), b in zip(exp_a.vae.state_dict().items(), exp_b.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.cuda
def test_cuda_placement_and_cpu_checkpoint(tmp_path):
    exp, trainer = _trainer(tmp_path, 3, **{"train.device": "cuda"})
    trainer.fit()
    assert all(p.is_cuda for p in exp.vae.parameters()) and trainer.data.is_cuda
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # saved on the CPU
    assert all(not v.is_cuda for v in state["module"].values())
    _, resumed = _trainer(tmp_path, 5, **{"train.device": "cuda"})
    assert resumed.fit(resume=True)["step"] == 5


@pytest.mark.parametrize("part", ["rng", "elbo", "step"])
def test_damaged_checkpoint_entries_give_a_checkpoint_error(tmp_path, part):
    _, trainer = _trainer(tmp_path, 2)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state[part] = {"rng": {"torch": 3}, "elbo": [1, 2], "step": "many"}[part]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=rf"checkpoint's '{part}' entry cannot be restored"):
        _trainer(tmp_path, 4)[1].fit(resume=True)


def test_train_seconds_add_up_over_resumed_segments(tmp_path):
    """A resumed run reports its whole training time: the checkpoint carries the earlier segments' seconds."""
    _, first = _trainer(tmp_path, 10, **{"train.checkpoint_every": 10})
    first_seconds = first.fit()["seconds"]
    saved = load_checkpoint(tmp_path)["train_seconds"]
    assert 0 < saved <= first_seconds
    _, resumed = _trainer(tmp_path, 20, **{"train.checkpoint_every": 10})
    result = resumed.fit(resume=True)
    assert result["step"] == 20
    assert result["seconds"] > saved  # earlier segment plus this one, not this one alone
    assert load_checkpoint(tmp_path)["train_seconds"] == pytest.approx(result["seconds"], abs=0.5)
    # a checkpoint written before this key existed still loads (counted as 0 s)
    state = load_checkpoint(tmp_path)
    del state["train_seconds"]
    _, old = _trainer(tmp_path, 20)
    old.load_state_dict(state)
    assert old.train_seconds() == 0.0
