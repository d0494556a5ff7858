"""End to end: a tiny dSprites run of `thesis-5.6` through the CLI (config -> runner -> metrics -> figures)."""

import json

import numpy as np

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


TINY_SUITE = ["data.num_images=256", "data.test_images=64", "train.steps=4", "train.checkpoint_every=4",
              "train.tensorboard=false", "train.threads=1", "eval.metric_num_train=12", "eval.metric_num_eval=8",
              "eval.metric_group_size=4", "eval.metric_num_variance=64", "eval.metric_num_points=64",
              "eval.loss_images=64", "eval.metric_num_test=32", "eval.downstream_train_sizes=[10, 20]",
              "eval.efficiency_sizes=[10, 20]", "eval.kl_samples=50"]  # fmt: skip


def test_full_table_5_6_suite_with_robustness_and_classes_by_shape(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "thesis-5.6", "--smoke", "--out", str(out), "--no-progress", *TINY_SUITE,
            "eval.full_suite=true", "eval.robustness=true", "eval.robustness_images=16",
            "eval.flip_probabilities=[0.0, 0.05]", "eval.class_factor=shape", "prior.name=student_t",
            "prior.df=3"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["measures"]
    for key in ("beta_vae_score", "factor_vae_score", "mig", "dci_disentanglement", "dci_completeness",
                "dci_informativeness", "sap", "sample_efficiency"):  # fmt: skip
        assert isinstance(m[key], float) and np.isfinite(m[key]), key
    assert 0.0 <= m["dci_disentanglement"] <= 1.0 and m["sample_efficiency"] > 0
    # the dimension-wise KL is against the run's own prior (Student-t): Monte Carlo, not the N(0, 1) closed form
    assert metrics["dimensionwise_kl_method"] == "monte_carlo" and len(metrics["dimensionwise_kl"]) == 10
    robust = metrics["table_5_6"]["robustness"]["per_condition"]
    assert {"clean", "inverted", "triangle"} <= set(robust)
    # flipping with probability 0 is the clean input: the codes do not move
    assert set(robust) == {"clean", "flip_0", "flip_0.05", "triangle", "inverted"}
    assert robust["flip_0"]["code_shift"] == pytest.approx(0.0, abs=1e-6)
    assert robust["flip_0.05"]["code_shift"] > 0
    classes = metrics["class_magnitudes"]
    assert classes["classes"] == ["square", "ellipse", "heart"] and np.array(classes["values"]).shape == (3, 10)
    for name in ("traversals.png", "aggregate_posterior.png", "mu_sigma_kde.png", "class_magnitudes.png",
                 "robustness_traversals_inverted.png"):  # fmt: skip
        assert (out / "figures" / name).is_file(), name
