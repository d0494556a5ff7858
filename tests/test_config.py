"""Typed configs: YAML loading, dotted overrides, clear errors, sizes."""

from __future__ import annotations

import pytest

from pyro_decomp.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    experiment_ids,
    load_experiment,
    load_yaml,
    parse_overrides,
    save_config,
)


def test_shipped_experiments_load():
    assert {"fig3-pinwheel", "fig3-pinwheel-grid"} <= set(experiment_ids())
    paper = load_experiment("fig3-pinwheel")
    # paper App. B: n = 400, full batch, 500 epochs, Adam 1e-3 (0.9, 0.999); mixture C=4, σ²=0.03
    assert paper.size == "paper" and paper.train.steps == 500 and paper.train.batch_size is None
    assert paper.train.lr == 1e-3 and paper.train.adam_betas == [0.9, 0.999]
    assert paper.data.arms * paper.data.per_arm == 400
    assert (paper.prior.n_components, paper.prior.variance, paper.divergence.type) == (4, 0.03, "inclusive_kl")
    assert (paper.family, paper.networks.hidden_dim, paper.likelihood.scale) == ("pinwheel", 100, None)
    smoke = load_experiment("fig3-pinwheel", size="smoke")
    assert smoke.size == "smoke" and smoke.train.steps < paper.train.steps


def test_overrides_are_typed_and_applied_after_the_size():
    over = parse_overrides(
        ["train.steps=7", "model.beta=0.5", "divergence.num_prior_samples=null", "train.adam_betas=[0.5, 0.9]"]
    )
    assert over == {
        "train.steps": 7,
        "model.beta": 0.5,
        "divergence.num_prior_samples": None,
        "train.adam_betas": [0.5, 0.9],
    }
    cfg = load_experiment("fig3-pinwheel", size="smoke", overrides=over)
    assert cfg.train.steps == 7 and cfg.model.beta == 0.5 and cfg.train.adam_betas == [0.5, 0.9]
    assert isinstance(load_experiment("fig3-pinwheel", overrides={"model.alpha": 2}).model.alpha, float)
    # YAML 1.1 reads "1e-4" as a string; numbers without a dot are still numbers here
    assert load_experiment("fig3-pinwheel", overrides=parse_overrides(["train.lr=1e-4"])).train.lr == 1e-4


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model.bta": 1.0}, r"unknown config key 'model.bta'. Did you mean 'model.beta'"),
        ({"trian.steps": 1}, r"unknown config key 'trian.steps'. Did you mean 'train.steps'"),
        ({"train": 3}, r"'train' is a config section; override one of its options: train.adam_betas, .*train.steps"),
        ({"train.steps": "many"}, r"train.steps: expected an integer, got 'many'"),
        ({"train.steps": -1}, r"train.steps: must be >= 0"),
        ({"model.beta": True}, r"model.beta: expected a number"),
        ({"prior.means": "diagonal"}, r"prior 'mixture': Unknown means layout 'diagonal'; choose 'corners' or 'axes'"),
        ({"divergence.type": "mmd_x"}, r"unknown divergence 'mmd_x'. Did you mean 'mmd'.* Choose one of: beta_tcvae, "
                                        "capacity, dip_vae, exclusive_kl, factor_vae, inclusive_kl, mmd, none"),
        ({"train.device": "tpu"}, r"train.device: invalid value 'tpu'; choose one of auto, cpu, cuda"),
        ({"divergence.type": "none"}, r"alpha > 0 needs a divergence; set divergence.type to one of beta_tcvae"),
    ],
    ids=["typo", "section-typo", "section-scalar", "type", "range", "bool", "choice", "divergence", "device", "alpha"],
)
def test_invalid_overrides(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_experiment("fig3-pinwheel", overrides=overrides)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_bad_override_syntax_and_names():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["train.steps"])
    with pytest.raises(ConfigError, match="unknown experiment 'fig3-pinwhel'. Did you mean 'fig3-pinwheel'"):
        load_experiment("fig3-pinwhel")
    with pytest.raises(ConfigError, match="unknown size 'huge'; choose one of"):
        load_experiment("fig3-pinwheel", size="huge")
    with pytest.raises(ConfigError, match="is a sweep; run it with `pyro-decomp sweep"):
        load_experiment("fig3-pinwheel-grid")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_experiment("no/such/file.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("config: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_yaml(path)


def test_user_file_and_roundtrip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("id: mine\nconfig:\n  model: {beta: 0.3}\nsizes: {tiny: {train.steps: 3}}\ndefault_size: tiny\n")
    cfg = load_experiment(str(path))
    assert (cfg.id, cfg.size, cfg.train.steps, cfg.model.beta) == ("mine", "tiny", 3, 0.3)
    save_config(cfg, tmp_path / "config.yaml")
    assert config_from_dict(load_yaml(tmp_path / "config.yaml")) == cfg
    path.write_text("id: mine\nconfg: {}\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'confg'. Did you mean 'config'"):
        load_experiment(str(path))
    assert config_to_dict(cfg)["model"]["beta"] == 0.3



def _run_configs(exp_id: str, size: str) -> list[dict]:
    """The resolved config of each run of an experiment (one for a run, one per grid cell for a sweep)."""
    from pyro_decomp.config import _experiments_dir, load_experiment, load_yaml
    from pyro_decomp.experiments.sweep import load_sweep

    if "grid" in load_yaml(_experiments_dir() / f"{exp_id}.yaml"):
        return [run.config for run in load_sweep(exp_id, size=size).runs]
    cfg = load_experiment(exp_id, size=size)
    return [{"family": cfg.family, "data": dict(cfg.data), "eval": vars(cfg.eval) if cfg.eval else {}}]


def test_every_image_experiment_has_smoke_cpu_and_paper_sizes_and_cpu_needs_no_local_data():
    """Issue 11 (3, 4): one code path, three sizes; a cpu run must work without data sets that cannot be
    had offline, so its data is generated (procedural dSprites), labelled as a stand-in where it replaces one."""
    from pyro_decomp.config import experiment_ids

    image_ids = []
    for exp_id in experiment_ids():
        if _run_configs(exp_id, "paper")[0]["family"] != "images":
            continue
        image_ids.append(exp_id)
        smoke, cpu, paper = (_run_configs(exp_id, size) for size in ("smoke", "cpu", "paper"))
        assert len(smoke) <= len(cpu) <= len(paper), exp_id
        for c in cpu:
            assert c["data"]["name"] == "dsprites", exp_id
        if paper[0]["data"]["name"] != "dsprites":
            assert all("stands in" in c["eval"]["note"] for c in cpu), exp_id
    assert {"thesis-5.3", "thesis-5.6", "thesis-grids", "fig2-anisotropic", "fig2-student", "fig4-sparsity",
            "fig4-celeba", "fig4-sparsity-celeba", "fig7-classes"} <= set(image_ids)  # fmt: skip
