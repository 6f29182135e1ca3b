"""The finished runs of the diagnostic as its analyses read them: metrics rows and λ arrays from disk."""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from ...result_files import read_csv, read_npz

__all__ = ["RunData", "load_runs", "nearest_epoch_index", "epoch_title", "by_method", "seed_mean_curve",
           "accuracy_curve", "STUDY_EPOCHS"]

# the epochs at which the study draws its per-epoch figures (the nearest measured epoch when one is missing)
STUDY_EPOCHS = (0, 10, 25, 50)


@dataclass
class RunData:
    """One finished run: its place in the grid, its training metrics and its λ arrays.

    ``rows`` of ``training_metrics.csv``, and ``lam``, the arrays of ``lambda_data.npz`` (``lambda_values [M, K]``,
    ``log_abs_derivatives [M, K, N]``, ``epochs [M]``, …).
    """

    label: str
    family: str
    family_dir: str
    strength: object
    rel: str
    rows: list
    lam: dict
    seed: int = 0
    dir: str = ""

    @property
    def final(self) -> dict:
        """The last row of ``training_metrics.csv``."""
        return self.rows[-1]

    @property
    def lambda_values(self) -> np.ndarray:
        """``lambda_values [M, K]``: λ per measurement and direction."""
        return np.asarray(self.lam["lambda_values"], float)

    @property
    def epochs(self) -> np.ndarray:
        """``epochs [M]`` of the measurements."""
        return np.asarray(self.lam["epochs"])


def load_runs(ds_dir: pathlib.Path, run_list: list[dict]) -> list[RunData]:
    """The runs listed in ``experiment_config.json`` (``run_list``) under the data set's folder ``ds_dir``.

    Raises:
        FileNotFoundError: a run has no metrics or λ file (it has not finished).
    """
    runs = []
    for r in run_list:
        d = ds_dir / r.get("dir", r["rel"])
        for f in ("training_metrics.csv", "lambda_data.npz"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d / f} is missing; the run has not finished (rerun `lamda run diagnostic` "
                                        f"with the same --out to complete it)")
        runs.append(RunData(r["label"], r["family"], r["family_dir"], r["strength"], r["rel"],
                            read_csv(d / "training_metrics.csv"), read_npz(d / "lambda_data.npz"),
                            int(r.get("seed", 0)), r.get("dir", r["rel"])))
    return runs


def by_method(runs: list[RunData]) -> dict[str, list[RunData]]:
    """The runs grouped by method label (its seeds), in run order."""
    out: dict[str, list[RunData]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    return out


def nearest_epoch_index(epochs, target: int) -> int:
    """Index of the measured epoch nearest to ``target`` (the earlier one on a tie)."""
    e = np.asarray(epochs)
    return int(np.argmin(np.abs(e - target) + 1e-9 * (e > target)))


def epoch_title(run: RunData, target: int) -> tuple[int, str]:
    """The index of the measured epoch nearest to ``target`` and how a figure's title names it."""
    j = nearest_epoch_index(run.epochs, target)
    e = int(run.epochs[j])
    return j, (f"epoch {e}" if e == target else f"epoch {target} requested, nearest measured epoch {e}")


def seed_mean_curve(members: list[RunData]) -> tuple[np.ndarray, np.ndarray]:
    """Epochs ``[E]`` and the mean over seeds of the mean-over-directions λ ``[E]`` (epochs common to all seeds)."""
    ep = members[0].epochs
    common = [e for e in ep if all(e in m.epochs for m in members)]
    vals = np.array([[np.nanmean(m.lambda_values[list(m.epochs).index(e)]) for e in common] for m in members])
    return np.array(common), vals.mean(0)


def accuracy_curve(members: list[RunData]) -> tuple[list, np.ndarray]:
    """Epochs and the mean over seeds of the test accuracy per epoch."""
    ep = [x["epoch"] for x in members[0].rows]
    acc = np.mean([[x["test_acc"] for x in m.rows[:len(ep)]] for m in members], 0)
    return ep, acc
