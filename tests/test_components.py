"""Experiments as plugins: every part reachable from a config through nested specs, the family registry,
and a new experiment added as one module plus one YAML file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pyro_decomp.components import component, registered
from pyro_decomp.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, load_experiment
from pyro_decomp.experiments import ExperimentFamily, families, get_family, register_family
from pyro_decomp.experiments.sweep import load_sweep
from pyro_decomp.runner import build_experiment, run_experiment
from test_datasets import make_mnist_like

TINY_PIN = {"data.per_arm": 10, "data.test_per_arm": 5, "train.steps": 3, "train.checkpoint_every": 3,
            "eval.num_samples": 50, "eval.posterior_draws": 2, "eval.grid_size": 8, "train.progress": False,
            "train.tensorboard": False}  # fmt: skip


def _pin(**over):
    return load_experiment("fig3-pinwheel", size="smoke", overrides={**TINY_PIN, **over})


def test_every_registered_part_is_documented_and_named():
    COMPONENTS = {k: registered(k) for k in ("data", "prior", "likelihood", "networks", "divergence")}
    for kind in COMPONENTS:
        assert COMPONENTS[kind], kind
        for name, comp in COMPONENTS[kind].items():
            assert comp.doc, f"{kind} {name} has no docstring line"
    assert {"pinwheel", "dsprites", "fashion_mnist", "mnist", "celeba"} <= set(COMPONENTS["data"])
    assert {"isotropic", "anisotropic", "student_t", "mixture", "sparse_mixture", "hierarchical_scale"} <= set(
        COMPONENTS["prior"]
    )
    assert {"gaussian", "laplace", "bernoulli"} <= set(COMPONENTS["likelihood"])
    assert {"pinwheel", "shapes", "burgess", "celeba", "fashion_mnist"} <= set(COMPONENTS["networks"])
    assert {"inclusive_kl", "mmd", "exclusive_kl", "total_correlation", "beta_tcvae", "factor_vae", "dip_vae",
            "capacity", "none"} <= set(COMPONENTS["divergence"])  # fmt: skip


@pytest.mark.parametrize(
    "over, check",
    [
        ({"prior.name": "student_t", "prior.df": 3}, lambda vae: vae.prior.df == 3.0),
        ({"prior.name": "isotropic", "prior.scale": 2.0}, lambda vae: float(vae.prior.variance()[0]) == 4.0),
        ({"prior.name": "anisotropic", "prior.variance": [2.0, 0.5]},
         lambda vae: vae.prior.variance().tolist() == [2.0, 0.5] and not vae.prior.learn),
        ({"prior.name": "anisotropic", "prior.learn": True},
         lambda vae: vae.prior.learn and any("log_variance" in n for n, _ in vae.named_parameters())),
        ({"prior.name": "sparse_mixture", "prior.gamma": 0.5, "prior.sigma0": 0.1},
         lambda vae: (vae.prior.gamma, vae.prior.sigma0) == (0.5, 0.1)),
        ({"prior.n_components": 3, "prior.variance": 0.05}, lambda vae: vae.prior.n_components == 3),
        ({"likelihood.name": "laplace", "likelihood.scale": 0.2},
         lambda vae: type(vae.likelihood).__name__ == "LaplaceLikelihood" and vae.likelihood.scale == 0.2),
        ({"likelihood.scale": 0.5}, lambda vae: vae.likelihood.scale == 0.5 and vae.decoder.out_multiplier == 1),
        ({"networks.hidden_dim": 7}, lambda vae: any(p.shape[0] == 7 for p in vae.encoder.parameters())),
    ],
)  # fmt: skip
def test_config_reaches_every_part_and_parameter(over, check):
    exp = build_experiment(_pin(**over))
    assert check(exp.vae)


@pytest.mark.parametrize(
    "spec, cls, attrs",
    [
        ({"divergence.type": "mmd", "divergence.kernel": "per_dim", "divergence.num_prior_samples": 8}, "MMD",
         {"num_prior_samples": 8}),
        ({"divergence.type": "exclusive_kl", "divergence.estimator": "mws"}, "ExclusiveKL", {"estimator": "mws"}),
        ({"divergence.type": "beta_tcvae", "divergence.tc_weight": 3.0}, "BetaTCVAE", {}),
        ({"divergence.type": "dip_vae", "divergence.kind": "i", "divergence.lambda_od": 2.0}, "DIPVAE", {"kind": "i"}),
        ({"divergence.type": "factor_vae", "divergence.hidden_size": 16}, "FactorVAE", {}),
        ({"divergence.type": "capacity", "divergence.capacity": {"type": "linear_warmup", "start": 0.0, "end": 5.0,
          "steps": 10}}, "CapacityKL", {}),
    ],
)  # fmt: skip
def test_divergence_spec_goes_to_its_factory(spec, cls, attrs):
    cfg = _pin(**spec)
    div = build_experiment(cfg).elbo.divergence
    assert type(div).__name__ == cls
    for k, v in attrs.items():
        assert getattr(div, k) == v
    if cls == "BetaTCVAE":
        assert div.current_weights()["tc_weight"] == 3.0
    if cls == "DIPVAE":
        assert div.current_weights() == {"lambda_od": 2.0, "lambda_d": 1.0}


def test_anisotropic_pca_prior_matches_an_independent_pca():
    cfg = _pin(**{"prior.name": "anisotropic", "prior.init": "pca"})
    exp = build_experiment(cfg)
    x = exp.x_train.double().numpy()
    # independent computation: eigenvalues of the sample covariance, largest first, rescaled to mean 1
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T, ddof=1)))[::-1][:2]
    got = exp.vae.prior.variance().double().numpy()
    np.testing.assert_allclose(got, eig / eig.mean(), rtol=1e-4)


def test_switching_a_part_resets_its_parameters():
    raw = config_to_dict(_pin())
    assert raw["prior"]["n_components"] == 4
    out = apply_overrides(raw, {"prior.df": 2.0, "prior.name": "student_t"})  # order given does not matter
    assert out["prior"] == {"name": "student_t", "df": 2.0}
    assert config_from_dict(out).prior == {"name": "student_t", "df": 2.0}
    # the same name keeps the parameters
    assert apply_overrides(raw, {"prior.name": "mixture"})["prior"]["n_components"] == 4


@pytest.mark.parametrize(
    "over, message",
    [
        ({"prior.dff": 3, "prior.name": "student_t"}, r"unknown config key 'prior.dff' .*Did you mean 'prior.df'"),
        ({"prior.name": "studnet_t"}, r"unknown prior 'studnet_t'. Did you mean 'student_t'"),
        ({"divergence.type": "mmd", "divergence.kernal": "imq"}, r"Did you mean 'divergence.kernel'"),
        ({"networks.hiden_dim": 3}, r"Did you mean 'networks.hidden_dim'"),
        ({"likelihood.name": "bernoulli"}, r"needs binary data"),
        ({"networks.name": "burgess"}, r"takes images, but data 'pinwheel' is vectors; choose one of pinwheel"),
        ({"model.divergence": "mmd"}, r"'model.divergence' is now 'divergence.type'"),
        ({"model.tc_weight": 2}, r"'model.tc_weight' is now 'divergence.tc_weight'"),
        ({"divergence.type": "mmd", "divergence.kernel": "nope"}, r"divergence 'mmd'.*Unknown MMD kernel"),
        ({"prior.name": "student_t", "prior.df": "three"}, r"prior.df: expected a number"),
        ({"prior.latent_dim": 3}, r"prior.latent_dim: is set by the experiment"),
        ({"family": "pinweel"}, r"unknown experiment family 'pinweel'. Did you mean 'pinwheel'"),
        ({"eval.metric_num_train": 10}, r"unknown config key 'eval.metric_num_train'"),
    ],
)
def test_bad_specs_name_the_key_and_the_fix(over, message):
    with pytest.raises(ConfigError, match=message):
        _pin(**over)


def test_sweep_ties_keys_to_one_value():
    spec = load_sweep("thesis-grids", size="smoke")
    dip = [r for r in spec.runs if r.config["divergence"]["type"] == "dip_vae"]
    assert [r.config["divergence"]["lambda_od"] for r in dip] == [1.0, 3.0, 10.0, 30.0]
    assert all(r.config["divergence"]["lambda_d"] == r.config["divergence"]["lambda_od"] for r in dip)
    assert len({r.name for r in spec.runs}) == len(spec.runs) == 17


def test_families_are_registered_and_declare_typed_eval_sections():
    fams = families()
    assert {"pinwheel", "images", "appc-bias"} <= set(fams)
    for fam in fams.values():
        assert dataclasses.is_dataclass(fam.eval_config)
        cols = fam.summary_columns
        assert cols.index("seed") < cols.index("status")
    assert type(load_experiment("thesis-5.6").eval).__name__ == "ImageEval"
    assert type(load_experiment("fig3-pinwheel").eval).__name__ == "PinwheelEval"


# ---- a new experiment: one module (here: a class registered in the test) plus one YAML file -------------
@dataclasses.dataclass
class _CountEval:
    seed: int = 0
    figures: bool = False


class _MeanCodeFamily(ExperimentFamily):
    """Reports the mean encoder output of the test set; draws nothing."""

    name = "test-mean-code"
    eval_config = _CountEval
    defaults = dict(get_family("pinwheel").defaults)
    headline = ("mean_code",)
    summary_columns = ("name", "row", "seed", "status", "mean_code")

    def evaluate(self, exp, run_dir, *, train_seconds=None):
        from pyro_decomp.experiments import write_metrics

        loc, _ = exp.vae.encode(exp.x_test)
        metrics = {"family": self.name, "measures": {"mean_code": float(loc.detach().mean())}}
        write_metrics(run_dir, metrics)
        return metrics


def test_a_new_experiment_is_one_module_plus_one_yaml(tmp_path):
    register_family(_MeanCodeFamily)
    path = tmp_path / "mean-code.yaml"
    path.write_text(yaml.safe_dump({
        "id": "mean-code", "family": "test-mean-code", "description": "a test experiment",
        "config": {"data": {"name": "pinwheel", "per_arm": 5, "test_per_arm": 5},
                   "train": {"steps": 2, "progress": False, "tensorboard": False, "checkpoint_every": 2}},
    }))  # fmt: skip
    cfg = load_experiment(path)
    assert cfg.family == "test-mean-code" and cfg.prior.name == "mixture"  # the family's defaults
    out = run_experiment(cfg, tmp_path / "run")
    assert np.isfinite(out["measures"]["mean_code"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["measures"] == out["measures"]


def test_family_by_import_path():
    fam = get_family("pyro_decomp.experiments.pinwheel:PinwheelFamily")
    assert fam.name == "pinwheel"
    with pytest.raises(ValueError, match="cannot import"):
        get_family("no_such_module:Family")


# ---- image data from a local root -----------------------------------------------------------------------
def test_fashion_mnist_needs_a_local_root():
    cfg = load_experiment("thesis-5.6", size="smoke", overrides={
        "data.name": "fashion_mnist", "likelihood.name": "laplace", "networks.name": "fashion_mnist"})  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"data.root is not set: Fashion-MNIST cannot be downloaded"):
        build_experiment(cfg)


def test_fashion_mnist_stand_in_trains_and_reports_sparsity_and_classes(tmp_path):
    make_mnist_like(tmp_path, "FashionMNIST", num_train=40, num_test=12)
    over = {
        "data.name": "fashion_mnist", "data.root": str(tmp_path), "likelihood.name": "laplace",
        "networks.name": "fashion_mnist", "prior.name": "sparse_mixture", "prior.gamma": 0.8,
        "divergence.type": "mmd", "divergence.kernel": "per_dim", "model.latent_dim": 4, "model.alpha": 10.0,
        "train.steps": 2, "train.batch_size": 8, "train.progress": False, "train.tensorboard": False,
        "eval.loss_images": 12,
    }  # fmt: skip
    cfg = load_experiment("thesis-5.6", size="smoke", overrides=over)
    exp = build_experiment(cfg)
    assert tuple(exp.x_train.shape) == (40, 1, 32, 32) and exp.x_train.dtype == torch.float32
    assert float(exp.x_train[:].max()) <= 1.0
    out = run_experiment(cfg, tmp_path / "run")
    m = out["measures"]
    assert "factor_vae_score" not in m  # no ground-truth factors
    assert 0.0 <= m["hoyer"] <= 1.0
    mags = np.array(out["class_magnitudes"]["values"])
    assert mags.shape == (10, 4)
    # independent computation of the per-class magnitudes from the saved encodings
    from pyro_decomp.runner import load_run

    vae, x_test = load_run(out["run_dir"], split="test")
    with torch.no_grad():
        loc, _ = vae.encode(x_test)
    labels = exp.y_test.numpy()
    for c in set(labels.tolist()):
        np.testing.assert_allclose(mags[c], loc[labels == c].abs().mean(0).numpy(), rtol=1e-5)
    assert (Path(out["run_dir"]) / "figures" / "class_magnitudes.png").is_file()


def test_hierarchical_prior_program_trains_from_a_config(tmp_path):
    cfg = _pin(**{"prior.name": "hierarchical_scale", "divergence.type": "none", "model.alpha": 0.0})
    out = run_experiment(cfg, tmp_path / "run")
    assert np.isfinite(out["test"]["loss"])


def test_component_lookup_error_lists_choices():
    with pytest.raises(ValueError, match=r"Choose one of: .*student_t"):
        component("prior", "nope")


def test_aggregate_mmd_is_zero_in_expectation_for_the_prior_itself():
    """The evaluation MMD of q(z) against p(z): when the encodings are the prior (loc ~ p, scale -> 0) it
    estimates 0 (unbiased; |value| < 5 sd over 20 seeds of n = 300), and a shifted q gives a clearly larger one."""
    from pyro_decomp.divergences.mmd import PerDimensionIMQKernel
    from pyro_decomp.experiments.images import aggregate_mmd
    from pyro_decomp.models import SparseMixturePrior

    prior = SparseMixturePrior(4, gamma=0.8)
    kernel = PerDimensionIMQKernel()
    same, shifted = [], []
    for seed in range(20):
        torch.manual_seed(100 + seed)
        loc = prior.distribution().sample((300,))
        scale = torch.full_like(loc, 1e-6)
        same.append(aggregate_mmd(loc, scale, prior, kernel, seed=seed))
        shifted.append(aggregate_mmd(loc + 1.0, scale, prior, kernel, seed=seed))
    same = np.array(same)
    assert abs(same.mean()) < 5 * same.std(ddof=1) / np.sqrt(len(same))
    assert min(shifted) > same.max() + 10 * same.std(ddof=1)


def test_beta_and_alpha_take_schedule_specs(tmp_path):
    """An annealed beta from the config reaches the ELBO as a schedule: 0 at step 0, half-way at step 5."""
    cfg = _pin(**{"model.beta": {"type": "linear_warmup", "start": 0.0, "end": 2.0, "steps": 10}})
    elbo = build_experiment(cfg).elbo
    assert elbo.beta(0) == 0.0 and elbo.beta(5) == pytest.approx(1.0)
    out = run_experiment(cfg, tmp_path / "run")
    assert np.isfinite(out["test"]["loss"])
    with pytest.raises(ConfigError, match=r"model.beta: .*schedule type must be one of"):
        _pin(**{"model.beta": {"type": "nope"}})
    with pytest.raises(ConfigError, match=r"model.alpha: the schedule must stay >= 0"):
        _pin(**{"model.alpha": {"type": "linear_warmup", "start": 0.0, "end": -1.0, "steps": 10}})
