"""The diagnostic's post-hoc validation of its λ measurement, from the saved arrays alone.

Four analyses, one folder each under ``validation_analysis/``: direction convergence (how many directions K),
order sensitivity (which order window), temporal directional stability (is every direction's λ steady), and the
joint K × order optimisation (the cheapest setting that meets the study's criteria).
[`metrics`][lamda.studies.diagnostic.validation.metrics] computes,
[`tables`][lamda.studies.diagnostic.validation.tables] writes the CSVs, one module per folder draws its figures;
[`validation_files`][lamda.studies.diagnostic.validation.validation_files] lists the tree by the study's file names.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

from .... import plots
from ..config import STUDY_SPAGHETTI
from ..runs import STUDY_EPOCHS, RunData
from . import direction_convergence as dc_fig
from . import joint_optimization as joint_fig
from . import order_sensitivity as order_fig
from . import temporal_stability as stab_fig
from . import metrics, tables

__all__ = ["validation_files", "spaghetti_file", "run_validation", "Validation"]

FOLDERS = {"convergence": "direction_convergence", "order": "order_sensitivity",
           "stability": "temporal_directional_stability", "joint": "joint_K_order_optimization"}


def spaghetti_file(family: str, strength: float) -> str:
    """The study's name of a per-method spaghetti figure: ``spaghetti_<family>_<strength>.png``."""
    return f"spaghetti_{family}_{strength:g}.png"


def validation_files(labels, families=()) -> list[str]:
    """Every file of ``validation_analysis/`` (relative paths) for runs with these method labels and families.

    The study's named spaghetti figures exist for the families of
    [`config.STUDY_SPAGHETTI`][lamda.studies.diagnostic.config.STUDY_SPAGHETTI] present.
    """
    ep = [f"{e}" for e in STUDY_EPOCHS]
    named = [spaghetti_file(f, s) for f, s in STUDY_SPAGHETTI if f in set(families)]
    return ([f"{FOLDERS['convergence']}/{f}" for f in
             ["direction_convergence.png", "direction_convergence.csv", "cv_vs_K_across_training.png",
              "per_method_convergence.png"] + [f"convergence_epoch_{e}.png" for e in ep]]
            + [f"{FOLDERS['order']}/{f}" for f in
               ["lambda_vs_order_config.png", "per_method_order_sensitivity.png", "order_sensitivity.csv",
                "order_difference_heatmap.png", "first_order_bias_analysis.png", "first_order_bias.csv"]]
            + [f"{FOLDERS['stability']}/{f}" for f in
               ["spaghetti_all_methods_grid.png", "violin_evolution.png", "cv_over_time.png",
                "direction_correlation_matrix.png", "temporal_stability.csv"]
               + [f"spaghetti_{lab}.png" for lab in labels] + named]
            + [f"{FOLDERS['joint']}/{f}" for f in
               [spec[0] for spec in joint_fig.METRIC_HEATMAPS.values()]
               + ["pareto_frontier.png", "per_method_K_order_grid.png", "temporal_evolution.gif",
                  "optimal_config_recommendations.txt", "joint_grid_final_epoch.csv", "joint_grid.npz"]
               + [f"heatmap_lambda_estimate_epoch_{e}.png" for e in ep]])


@dataclass
class Validation:
    """What the summary quotes from the validation analyses.

    The direction-convergence metrics per run (``convergence``), the recommendation sentence, and for each of the
    study's named spaghetti figures the run drawn in it (None: no such run).
    """

    convergence: list[dict]
    recommendation: str
    spaghetti: dict[str, RunData | None]


def _direction_convergence(folder: pathlib.Path, runs: list[RunData]) -> list[dict]:
    ks, jms = metrics.direction_convergence(runs)
    tables.write_direction_convergence(folder / "direction_convergence.csv", runs, ks, jms)
    dc_fig.convergence_figure(folder / "direction_convergence.png", runs, ks, jms)
    for target in STUDY_EPOCHS:
        dc_fig.convergence_at_epoch_figure(folder / f"convergence_epoch_{target}.png", runs, ks, jms, target)
    dc_fig.cv_vs_k_figure(folder / "cv_vs_K_across_training.png", runs, ks, jms)
    dc_fig.per_method_convergence_figure(folder / "per_method_convergence.png", runs, ks, jms)
    return jms


def _order_sensitivity(folder: pathlib.Path, runs: list[RunData]) -> None:
    ow = metrics.order_windows(runs)
    tables.write_order_sensitivity(folder / "order_sensitivity.csv", runs, ow)
    order_fig.lambda_vs_order_config_figure(folder / "lambda_vs_order_config.png", runs, ow)
    order_fig.per_method_order_figure(folder / "per_method_order_sensitivity.png", runs, ow)
    order_fig.order_difference_figure(folder / "order_difference_heatmap.png", runs, ow)
    bias = [metrics.first_order_bias(r) for r in runs]
    tables.write_first_order_bias(folder / "first_order_bias.csv", runs, bias)
    order_fig.first_order_bias_figure(folder / "first_order_bias_analysis.png", runs, bias)


def _temporal_stability(folder: pathlib.Path, runs: list[RunData]) -> dict[str, RunData | None]:
    tables.write_temporal_stability(folder / "temporal_stability.csv", runs)
    ylim = stab_fig.lambda_ylim(runs)
    stab_fig.spaghetti_grid_figure(folder / "spaghetti_all_methods_grid.png", runs, ylim)
    for r in runs:
        stab_fig.spaghetti_figure(folder / f"spaghetti_{r.label}.png", r, ylim)
    chosen = {}
    for family, strength in STUDY_SPAGHETTI:
        name = spaghetti_file(family, strength)
        chosen[name] = metrics.spaghetti_choice(runs, family, strength)
        if chosen[name] is not None:
            stab_fig.spaghetti_figure(folder / name, chosen[name], ylim)
    stab_fig.violin_figure(folder / "violin_evolution.png", runs, ylim)
    stab_fig.cv_over_time_figure(folder / "cv_over_time.png", runs)
    stab_fig.direction_correlation_figure(folder / "direction_correlation_matrix.png", runs)
    return chosen


def _joint_optimization(folder: pathlib.Path, runs: list[RunData]) -> str:
    joint = [metrics.joint_metrics(r.lam["log_abs_derivatives"]) for r in runs]
    tables.write_joint_grid(folder, runs, joint)
    for m in joint_fig.METRIC_HEATMAPS:
        joint_fig.metric_heatmap_figure(folder, m, joint)
    lam_at = metrics.lambda_at_study_epochs(runs, joint)
    vr = plots.value_range(*lam_at)
    for target, lam in zip(STUDY_EPOCHS, lam_at):
        joint_fig.lambda_at_epoch_figure(folder / f"heatmap_lambda_estimate_epoch_{target}.png", runs, target, lam, vr)
    cost = metrics.config_cost()
    points, front = metrics.pareto_front(cost, metrics.mean_over_runs([jm["deviation"][-1] for jm in joint]))
    joint_fig.pareto_figure(folder / "pareto_frontier.png", points, front)
    joint_fig.per_method_grid_figure(folder / "per_method_K_order_grid.png", runs, joint)
    joint_fig.temporal_evolution_gif(folder / "temporal_evolution.gif", runs, joint)
    rec = metrics.recommendation(joint, cost)
    tables.write_recommendations(folder / "optimal_config_recommendations.txt", len(runs), rec, cost, front)
    return tables.recommendation_line(rec, cost)


def run_validation(vdir: pathlib.Path, runs: list[RunData]) -> Validation:
    """Write the four analyses of ``runs`` (one seed's runs of one data set) under ``vdir``."""
    jms = _direction_convergence(vdir / FOLDERS["convergence"], runs)
    _order_sensitivity(vdir / FOLDERS["order"], runs)
    spaghetti = _temporal_stability(vdir / FOLDERS["stability"], runs)
    rec = _joint_optimization(vdir / FOLDERS["joint"], runs)
    return Validation(jms, rec, spaghetti)
