"""Trainer: exact resume, NaN guard, atomic and weights_only checkpoints, logs."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_decomp.config import load_experiment
from pyro_decomp.runner import _make_trainer, build_experiment
from pyro_decomp.train import (
    CheckpointError,
    NonFiniteLossError,
    Trainer,
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
        if step == 5:
            with torch.no_grad():
                trainer.module.decoder.net[0].weight.fill_(float("nan"))

    _, trainer = _trainer(tmp_path, 20, callbacks=[poison], **{"train.checkpoint_every": 5})
    with pytest.raises(NonFiniteLossError, match=r"the reconstruction term is nan at step 6.*checkpoint.pt") as info:
        trainer.fit()
    assert (info.value.term, info.value.step) == ("reconstruction", 6)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["module"].values())


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
