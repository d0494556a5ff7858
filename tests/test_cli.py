"""The `pyro-decomp` command line, end to end and with bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _tiny_run import TINY

from pyro_decomp.cli import main


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "pyro_decomp", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_run_end_to_end_then_resume_and_eval(tmp_path):
    import arviz as az

    proc = _cli("run", "fig3-pinwheel", "--smoke", "--out", "run", "--device", "cpu", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "checkpoint.pt", "figures/aggregate_posterior.png", "posterior.nc"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    m = metrics["measures"]
    for key in ("mmd_rbf", "kl_prior_to_aggregate", "kl_aggregate_to_prior", "occupancy_evenness", "nmi", "ari",
                "mean_log_prior", "overlap"):  # fmt: skip
        assert isinstance(m[key], float), key
    assert 0 <= m["occupancy_evenness"] <= 1 and sum(m["occupancy"]) == 40
    assert {"reconstruction", "kl", "divergence", "loss"} <= set(metrics["test"])
    idata = az.from_netcdf(run / "posterior.nc")
    assert idata.posterior["z"].dims == ("chain", "draw", "obs", "latent")
    assert idata.posterior["z"].shape == (1, 5, 40, 2)
    assert idata.prior["z"].shape == (1, 5, 40, 2) and idata.observed_data["x"].shape == (40, 2)
    # the same command again refuses to clobber the run
    again = _cli("run", "fig3-pinwheel", "--smoke", "--out", "run", *TINY, cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    # extend the run by resuming with more steps; in-process to save a start-up
    assert main(["run", "--resume", str(run), "train.steps=25", "--no-progress"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 25
    assert main(["eval", str(run)]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "fig3-pinwhel"], "unknown experiment 'fig3-pinwhel'. Did you mean 'fig3-pinwheel'"),
        (["run", "fig3-pinwheel", "model.bta=2"], "Did you mean 'model.beta'"),
        (["run", "fig3-pinwheel", "train.steps=ten"], "train.steps: expected an integer, got 'ten'"),
        (["run", "fig3-pinwheel", "prior.means=diag"], "choose 'corners' or 'axes'"),
        (["run", "fig3-pinwheel", "--size", "huge"], "unknown size 'huge'"),
        (["run", "fig3-pinwheel-grid"], "is a sweep"),
        (["run", "missing.yaml"], "does not exist"),
        (["run", "--resume", "no/such/dir"], "does not exist"),
        (["run"], "name an experiment"),
        (["sweep", "fig3-pinwheel"], "not a sweep"),
        (["sweep", "fig3-pinwheel-grid", "--workers", "0"], "workers must be a positive integer"),
        (["eval", "no/such/dir"], "not a run directory"),
    ],
    ids=[
        "experiment",
        "key",
        "value",
        "choice",
        "size",
        "sweep-as-run",
        "file",
        "resume",
        "nothing",
        "run-as-sweep",
        "workers",
        "eval",
    ],  # fmt: skip
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-decomp: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err


def test_corrupt_checkpoint_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "fig3-pinwheel", "--out", str(run), "--no-progress", *TINY, "eval.figures=false"]) == 0
    (run / "checkpoint.pt").write_bytes(b"\x00" * 100)
    for f in (run / "checkpoints").iterdir():
        f.write_bytes(b"")
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "train.steps=30"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "corrupt or truncated" in err and "start the run afresh" in err


def test_unknown_flag_uses_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "fig3-pinwheel", "--frobnicate"])
    assert info.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_list_names_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fig3-pinwheel " in out and "fig3-pinwheel-grid" in out and "workshop Fig. 2" in out


def test_module_entry_point_help(tmp_path):
    proc = _cli("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "run" in proc.stdout and "sweep" in proc.stdout


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_analyse_a_run_directory(tmp_path, capsys):
    import arviz as az

    run = tmp_path / "run"
    assert main(["run", "fig3-pinwheel", "--smoke", "--out", str(run), "--no-progress", *TINY]) == 0
    before = (run / "posterior.nc").read_bytes()
    assert main(["analyse", str(run), "--nuts", "1"]) == 0
    out = run / "analysis"
    report = json.loads((out / "amortisation.json").read_text())
    first = report["datapoints"][0]
    # the gaps are differences of the reported bounds, and PSIS k-hat is a finite number
    assert first["amortisation_gap"] == pytest.approx(first["local_elbo"] - first["amortised_elbo"], abs=1e-5)
    assert first["approximation_gap"] == pytest.approx(first["log_px"] - first["local_elbo"], abs=1e-5)
    assert first["psis_khat"] < 5
    idata = az.from_netcdf(out / "posterior_nuts.nc")
    assert "diverging" in idata.sample_stats
    assert (run / "posterior.nc").read_bytes() == before  # the run's own results are untouched
    capsys.readouterr()
    assert main(["analyse", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_appc_bias_runs_from_the_cli(tmp_path, capsys):
    out = tmp_path / "appc"
    assert main(["run", "appC-bias", "--smoke", "--out", str(out)]) == 0
    result = json.loads((out / "appc_bias.json").read_text())
    assert (out / "figures" / "appc_bias.png").is_file() and result
    metrics = json.loads((out / "metrics.json").read_text())
    kl = result["results"]["exclusive_kl/mss"]
    assert metrics["measures"]["mss_bias_smallest_batch"] == kl["bias"][0]
    # App. C: the MSS bias shrinks as the batch grows (at B = n it is only the reference's noise)
    assert abs(kl["bias"][-1]) < abs(kl["bias"][0])
    assert main(["run", "appC-bias", "--smoke", "model.beta=2"]) == 2
    assert "trains no model, so model.* settings do not apply" in capsys.readouterr().err
    # its settings are eval keys, typed and checked like any other
    assert main(["run", "appC-bias", "--smoke", "--out", str(tmp_path / "b"), "eval.batch_sizes=[1]"]) == 2
    assert "eval.batch_sizes: must be a non-empty list of sizes >= 2" in capsys.readouterr().err
    assert main(["run", "appC-bias", "--smoke", "--out", str(out)]) == 2  # results there: refuse, keep them
    assert "already holds results" in capsys.readouterr().err and (out / "appc_bias.json").is_file()
