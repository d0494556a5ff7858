"""End to end: a tiny dSprites run of `thesis-5.6` through the CLI (config -> runner -> metrics -> figures)."""

import json

import pytest

from pyro_decomp.cli import main
from pyro_decomp.config import ConfigError, load_experiment


def test_thesis_dsprites_smoke_run(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "thesis-5.6", "--smoke", "--out", str(out), "--no-progress",
            "divergence.type=beta_tcvae", "model.alpha=1.0", "divergence.tc_weight=6.0",
            "data.num_images=256", "data.test_images=64", "train.steps=6", "train.checkpoint_every=3",
            "eval.metric_num_train=10", "eval.metric_num_eval=10", "eval.metric_group_size=4",
            "eval.metric_num_variance=64", "eval.metric_num_points=64", "eval.loss_images=64",
            "train.log_every=1", "train.tensorboard=false", "train.threads=1"]  # fmt: skip
    assert main(argv) == 0
    for name in ("config.yaml", "checkpoint.pt", "metrics.json", "logs/train.jsonl", "figures/traversals.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == "dsprites" and metrics["divergence"] == "beta_tcvae"
    assert metrics["steps"] == 6 and metrics["num_train_images"] == 256
    m = metrics["measures"]
    for key in ("factor_vae_score", "beta_vae_score", "mig", "active_fraction"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    # Bernoulli NLL of a 64x64 binary image: positive and below 4096 * log(2) * 10 for any sane decoder
    assert 0.0 < m["test_reconstruction_per_image"] < 4096 * 10
    assert len(metrics["dimensionwise_kl"]) == 10 and all(k >= 0 for k in metrics["dimensionwise_kl"])
    assert metrics["metric_sizes"]["num_train"] == 10
    # every step of the minibatch loop is logged (batch 64 of 256 images), and its loss is scaled to the
    # 256 training images (dataset_size), not the batch: a 4x smaller sum would fail the 2x band
    log = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    ratio = log[-1]["reconstruction"] / 256 / metrics["train_per_point"]["reconstruction"]
    assert 0.5 < ratio < 2.0, ratio


def test_dsprites_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="networks.name: 'pinwheel' takes vectors, but data 'dsprites' is images; "
                                          "choose one of burgess, celeba, fashion_mnist, shapes"):
        load_experiment("thesis-5.6", size="smoke", overrides={"networks.name": "pinwheel"})
    with pytest.raises(ConfigError, match="divergence 'dip_vae': .*kind"):
        load_experiment("thesis-5.6", size="smoke", overrides={"divergence.type": "dip_vae", "divergence.kind": "iii"})
    with pytest.raises(ConfigError, match="data 'dsprites' has binary images: use bernoulli"):
        load_experiment("thesis-5.6", size="smoke", overrides={"likelihood.name": "gaussian"})
    with pytest.raises(ConfigError, match="unknown config key 'data.num_image'"):
        load_experiment("thesis-5.6", size="smoke", overrides={"data.num_image": 10})
