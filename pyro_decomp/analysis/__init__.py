"""Posterior analysis: ArviZ InferenceData, NUTS ground truth and the amortisation gap (SPEC §8)."""

from .amortisation import amortisation_report, analyse, analyse_run, save_report
from .arviz import (
    load_inference_data,
    nuts_diagnostics,
    sample_posterior_nuts,
    save_inference_data,
    to_inference_data,
)

__all__ = [
    "amortisation_report",
    "analyse",
    "analyse_run",
    "load_inference_data",
    "nuts_diagnostics",
    "sample_posterior_nuts",
    "save_inference_data",
    "save_report",
    "to_inference_data",
]
