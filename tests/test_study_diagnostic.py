"""`lamda run diagnostic` / `lamda analyze`: output tree, npz keys and shapes, sharding, kill-and-resume."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lamda import result_files
from lamda.cli import main
from tests._helpers import DRAFT, DRAFT_DPI

pytestmark = pytest.mark.xdist_group("diagnostic")      # the smoke run (a module fixture) is made once, on one worker

FAMILY_FILES = {
    "01_baseline": "baseline_comparison.png",
    "02_dropout": "dropout_comparison.png",
    "03_weight_decay": "wd_comparison.png",
    "04_data_augmentation": "augmentation_comparison.png",
    "05_label_smoothing": "smooth_comparison.png",
    "06_sam": "sam_comparison.png",
    "07_input_gradient_penalty": "igp_comparison.png",
}
# the smoke preset: every method at one (the middle) strength; run folders as the study names them
SMOKE_RUNS = ["01_baseline", "02_dropout/dropout_0.5", "03_weight_decay/wd_1e-3",
              "04_data_augmentation/rotation_translation", "05_label_smoothing/smooth_0.1",
              "06_sam/sam_rho_0.1", "07_input_gradient_penalty/igp_0.1"]
RUN_FILES = ["training_metrics.csv", "lambda_data.npz", "lambda_evolution.png", "final_model.pt"]
SUMMARY_FILES = ["all_methods_comparison.png", "performance_vs_lambda.png", "generalization_gap_vs_lambda.png",
                 "calibration_vs_lambda.png", "summary_statistics.csv"]
# the study's validation tree, spelled out with the study's file names (per-method spaghetti files are added per
# run label; the two named spaghetti figures exist when their family ran)
VALIDATION_FILES = [
    "direction_convergence/direction_convergence.png",
    "direction_convergence/direction_convergence.csv",
    "direction_convergence/convergence_epoch_0.png",
    "direction_convergence/convergence_epoch_10.png",
    "direction_convergence/convergence_epoch_25.png",
    "direction_convergence/convergence_epoch_50.png",
    "direction_convergence/cv_vs_K_across_training.png",
    "direction_convergence/per_method_convergence.png",
    "order_sensitivity/lambda_vs_order_config.png",
    "order_sensitivity/per_method_order_sensitivity.png",
    "order_sensitivity/order_sensitivity.csv",
    "order_sensitivity/order_difference_heatmap.png",
    "order_sensitivity/first_order_bias_analysis.png",
    "order_sensitivity/first_order_bias.csv",
    "temporal_directional_stability/spaghetti_all_methods_grid.png",
    "temporal_directional_stability/violin_evolution.png",
    "temporal_directional_stability/cv_over_time.png",
    "temporal_directional_stability/direction_correlation_matrix.png",
    "temporal_directional_stability/temporal_stability.csv",
    "joint_K_order_optimization/lambda_heatmap.png",
    "joint_K_order_optimization/heatmap_standard_error.png",
    "joint_K_order_optimization/heatmap_coefficient_variation.png",
    "joint_K_order_optimization/heatmap_deviation_from_truth.png",
    "joint_K_order_optimization/pareto_frontier.png",
    "joint_K_order_optimization/per_method_K_order_grid.png",
    "joint_K_order_optimization/temporal_evolution.gif",
    "joint_K_order_optimization/optimal_config_recommendations.txt",
    "joint_K_order_optimization/joint_grid_final_epoch.csv",
    "joint_K_order_optimization/joint_grid.npz",
    "joint_K_order_optimization/heatmap_lambda_estimate_epoch_0.png",
    "joint_K_order_optimization/heatmap_lambda_estimate_epoch_10.png",
    "joint_K_order_optimization/heatmap_lambda_estimate_epoch_25.png",
    "joint_K_order_optimization/heatmap_lambda_estimate_epoch_50.png",
]
NAMED_SPAGHETTI = {"weight_decay": "temporal_directional_stability/spaghetti_weight_decay_0.001.png",
                   "sam": "temporal_directional_stability/spaghetti_sam_0.1.png"}
# names the study does not use
OLD_NAMES = ["order_sensitivity/order_sensitivity.png", "temporal_directional_stability/spaghetti_plots.png",
             "joint_K_order_optimization/stderr_heatmap.png", "joint_K_order_optimization/cv_heatmap.png",
             "joint_K_order_optimization/deviation_heatmap.png", "joint_K_order_optimization/per_method_grid.png"]


def check_dataset_tree(root: pathlib.Path, runs, epochs: int, points: int, seeds: tuple = (),
                       direction_mode: str = "shared"):
    """Every file of the study's tree, and the npz keys/shapes of every run (of every ``seed_<s>/`` folder of a run
    with ``seeds``; ``direction_mode="per-point"``: no directions stored)."""
    M = len([e for e in range(epochs + 1) if e <= 10 or e == epochs])   # schedule for epochs <= 11
    for f in SUMMARY_FILES:
        assert (root / "00_summary" / f).is_file(), f
    folders = [f"{r}/seed_{s}" for r in runs for s in seeds] if seeds else list(runs)
    configs = [result_files.read_json(root / r / "config.json") for r in folders]
    labels = list(dict.fromkeys(c["label"] for c in configs))
    families = {c["family"] for c in configs}
    from lamda.studies.diagnostic.validation import validation_files
    listed = set(validation_files(labels, families))
    expected = (VALIDATION_FILES + [f"temporal_directional_stability/spaghetti_{lab}.png" for lab in labels]
                + [f for fam, f in NAMED_SPAGHETTI.items() if fam in families])
    assert listed == set(expected), set(expected) ^ listed
    for f in expected:
        assert (root / "validation_analysis" / f).is_file(), f
    for f in OLD_NAMES + [f for fam, f in NAMED_SPAGHETTI.items() if fam not in families]:
        assert not (root / "validation_analysis" / f).exists(), f
    fams = {r.split("/")[0] for r in runs}
    for fam in fams:
        assert (root / fam / FAMILY_FILES[fam]).is_file(), fam
    for r in folders:
        for f in RUN_FILES:
            assert (root / r / f).is_file(), f"{r}/{f}"
        z = result_files.read_npz(root / r / "lambda_data.npz")
        assert z["derivatives"].shape == (M, 15, 6)
        assert z["log_abs_derivatives"].shape == (M, 15, 6)
        assert z["derivatives_per_point"].shape == (M, points, 15, 6)
        assert z["lambda_values"].shape == (M, 15)
        for k in ("epochs", "train_acc", "test_acc", "train_loss", "test_loss"):
            assert z[k].shape == (M,), k
        assert z["direction_seeds"].ndim == 1 and z["measurement_indices"].shape == (points,)
        assert str(z["direction_mode"]) == direction_mode
        if direction_mode == "per-point":      # directions drawn per point: none stored
            assert "directions" not in z
        else:     # the study's protocol: 15 shared input directions, stored, the same at every measurement
            d = z["directions"]
            assert d.dtype == np.float32 and d.shape[:2] == (M, 15) and d.shape[2] in (784, 3 * 32 * 32)
            assert all(np.array_equal(d[0], d[j]) for j in range(M))
            np.testing.assert_allclose(np.linalg.norm(d[0].astype(np.float64), axis=1), 1.0, rtol=1e-5)
        assert np.all(np.isfinite(z["lambda_values"]))
        assert not (root / r / "checkpoint.pt").exists()
        rows = result_files.read_csv(root / r / "training_metrics.csv")
        assert [row["epoch"] for row in rows] == list(range(epochs + 1))
        for col in ("train_acc", "test_acc", "train_loss", "test_loss", "gap", "ece", "lambda_mean"):
            assert col in rows[0]
        assert result_files.load_checkpoint(root / r / "final_model.pt")["complete"]
    stats = result_files.read_csv(root / "00_summary" / "summary_statistics.csv")
    assert len(stats) == len(runs)


def check_every_file_loads(out: pathlib.Path):
    from PIL import Image
    for p in out.rglob("*"):
        if p.is_dir():
            continue
        assert ".tmp" not in p.name and p.name != "checkpoint.pt", p
        if p.suffix == ".npz":
            result_files.read_npz(p)
        elif p.suffix == ".csv":
            assert result_files.read_csv(p)
        elif p.suffix == ".json":
            result_files.read_json(p)
        elif p.suffix == ".pt":
            result_files.load_checkpoint(p)
        elif p.suffix in (".png", ".gif"):
            with Image.open(p) as im:
                if p.suffix == ".png":      # every PNG at the run's --dpi
                    assert tuple(round(v) for v in im.info["dpi"]) == (DRAFT_DPI, DRAFT_DPI), p
                im.verify()


def _run_killed_then_resumed(args: list, out, victim: str) -> str:
    """Run the CLI with ``args``, kill it once ``out / victim`` exists (a checkpoint on disk), start it again;
    the second run's stdout."""
    cmd = [sys.executable, "-m", "lamda.cli", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = out / victim
    deadline = time.time() + 240
    try:
        while not target.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert target.exists(), f"no mid-run checkpoint appeared (rc={proc.poll()}): {proc.stderr.read()[-2000:]!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (out / "summary.md").exists()
    base_mtime = (out / "01_baseline" / "final_model.pt").stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "01_baseline finished earlier, skipped" in done.stdout
    assert (out / "01_baseline" / "final_model.pt").stat().st_mtime_ns == base_mtime
    return done.stdout


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The acceptance command `lamda run diagnostic --preset smoke` (the offline digits set), killed mid-run and
    started again: ``(its output folder, the resumed run's stdout)``."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    log = _run_killed_then_resumed(["run", "diagnostic", "--preset", "smoke", *DRAFT, "--out", str(out), "--no-progress"],
                                   out, "02_dropout/dropout_0.5/checkpoint.pt")
    return out, log


def test_smoke_acceptance_killed_and_resumed(smoke_run):
    """The smoke run, killed and resumed: no finished run redone, every file of the study's tree by the study's
    names, every file loads; then `lamda analyze` from disk writes the same summary."""
    out, log = smoke_run
    assert "the cell phase took" in log and "rank 0 wrote the analysis in" in log
    assert (out / "experiment_config.json").is_file() and (out / "summary.md").is_file()
    check_dataset_tree(out, SMOKE_RUNS, epochs=2, points=8)
    check_every_file_loads(out)
    summary = (out / "summary.md").read_text()
    assert "| method | seeds | test acc |" in summary
    assert "± n/a" in summary and "± 0.0000" not in summary and "**Caveat:**" in summary
    assert summary.count("**H") == 4 and ("Pearson r" in summary or "not enough data" in summary)
    for r in SMOKE_RUNS:
        assert f"| {result_files.read_json(out / r / 'config.json')['label']} |" in summary
    # the named spaghetti figures say which run (strength) they show
    assert ("`spaghetti_weight_decay_0.001.png` shows `wd_1e-3` (weight decay 0.001)" in summary
            and "`spaghetti_sam_0.1.png` shows `sam_rho_0.1` (SAM ρ = 0.1)" in summary)
    # regenerate every analysis from disk alone
    before = summary
    for d in ("00_summary", "validation_analysis"):
        shutil.rmtree(out / d)
    (out / "summary.md").unlink()
    for r in SMOKE_RUNS:
        (out / r / "lambda_evolution.png").unlink()
    for fam, f in FAMILY_FILES.items():
        (out / fam / f).unlink()
    assert main(["analyze", str(out), *DRAFT]) == 0
    check_dataset_tree(out, SMOKE_RUNS, epochs=2, points=8)
    assert (out / "summary.md").read_text() == before


def test_both_datasets_put_cifar_in_a_subtree(data_root, tmp_path):
    if not (data_root / "CIFAR10-jpeg").is_dir():
        pytest.skip("CIFAR10-jpeg not in the data root")
    out = tmp_path / "out"
    assert main(["run", "diagnostic", "--dataset", "both", "--preset", "smoke", *DRAFT, "--methods", "baseline,augmentation",
                 "--epochs", "1", "--points", "4", "--data-root", str(data_root), "--out", str(out),
                 "--no-progress"]) == 0
    check_dataset_tree(out, ["01_baseline", "04_data_augmentation/rotation_translation"], epochs=1, points=4)
    check_dataset_tree(out / "cifar10", ["01_baseline", "04_data_augmentation/crop_flip_rotation"], epochs=1, points=4)
    s = (out / "summary.md").read_text()
    assert "## mnist" in s and "## cifar10" in s


def test_registry_and_shard_parsing():
    from lamda.studies import get, registry
    from lamda.studies.runner import parse_shard
    assert "diagnostic" in registry() and get("diagnostic").analyze is not None
    assert parse_shard(None) == (0, 1) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="unknown experiment"):
        get("nope")


def test_plan_runs_match_the_study():
    from lamda.studies.diagnostic.config import plan_runs
    full = [s.rel for s in plan_runs("mnist", "full")]
    assert len(full) == 17 and full[0] == "01_baseline" and full[1] == "02_dropout/dropout_0.3"
    assert full[-1] == "07_input_gradient_penalty/igp_1.0"
    assert "04_data_augmentation/rotation_translation" in full
    assert {"03_weight_decay/wd_1e-4", "03_weight_decay/wd_1e-2", "05_label_smoothing/smooth_0.05",
            "06_sam/sam_rho_0.2", "07_input_gradient_penalty/igp_0.01"} <= set(full)
    assert [s.rel for s in plan_runs("mnist", "smoke")] == SMOKE_RUNS
    cifar = [s.rel for s in plan_runs("cifar10", "full")]
    assert len(cifar) == 18
    assert "04_data_augmentation/crop_flip" in cifar and "04_data_augmentation/crop_flip_rotation" in cifar
    s = plan_runs("cifar10", "full")[0].settings
    assert (s["train"], s["test"], s["epochs"], s["lr"], s["schedule"]) == (10000, 1000, 100, 3e-3, "cosine")
    with pytest.raises(ValueError, match="unknown method"):
        plan_runs("mnist", "smoke", ["bogus"])


def test_onset_rules_on_hand_made_series():
    from lamda.studies.diagnostic.analysis import accuracy_degradation_onset, convergence_epoch, lambda_onset
    acc = [0.1, 0.8, 0.9, 0.95, 0.949, 0.93, 0.92]
    rows = [{"epoch": e, "test_acc": a} for e, a in enumerate(acc)]
    assert accuracy_degradation_onset(rows) == 5          # from epoch 5 on ≥ 1 pp below the 0.95 peak (epoch 3)
    dip = [{"epoch": e, "test_acc": a} for e, a in enumerate([0.1, 0.9, 0.95, 0.93, 0.95, 0.92, 0.93, 0.94])]
    assert accuracy_degradation_onset(dip) == 5           # the one-epoch dip at 3 recovers; 5.. stays below 0.94
    assert accuracy_degradation_onset(dip[:5]) is None
    assert convergence_epoch(rows) == 3
    assert accuracy_degradation_onset(rows[:5]) is None
    epochs = np.array([0, 1, 2, 3, 4, 5, 6])
    base = np.array([-6.0, -4.0, -3.5, -3.0, -3.0, -2.5, -2.4])
    lam = base[:, None] + np.array([-0.01, 0.0, 0.01])[None, :]    # se = 0.01/sqrt(3)
    assert lambda_onset(epochs, lam, ref_epoch=3) == 5
    assert lambda_onset(epochs[:5], lam[:5], ref_epoch=3) is None
    assert lambda_onset(epochs, lam, ref_epoch=0) == 1


def test_joint_metrics_on_exact_lines():
    """log|d_n| exactly linear in n with slope s_k per direction: every window gives λ_k = s_k; CV = std/|mean|;
    the bootstrap standard error is measured (≈ std·√((n−1)/n)/√K here), the formula one is std/√K."""
    from lamda.studies.diagnostic.validation.metrics import WINDOWS, joint_metrics, meets
    s = np.linspace(-2.0, -1.6, 15)
    n = np.arange(1, 7)
    log_abs = (0.3 + s[:, None] * n[None, :])[None].repeat(2, 0)            # [M=2, 15, 6]
    jm = joint_metrics(log_abs, ks=(1, 5, 15), windows=WINDOWS, n_subsets=400, seed=1, n_boot=4000)
    sd = s.std(ddof=1)
    np.testing.assert_allclose(jm["lambda"][:, 2, :], s.mean())
    np.testing.assert_allclose(jm["deviation"][:, 2, :], 0.0, atol=1e-12)
    np.testing.assert_allclose(jm["stderr_formula"][:, 0, :], sd)
    np.testing.assert_allclose(jm["stderr_formula"][:, 1, :], sd / np.sqrt(5))
    np.testing.assert_allclose(jm["stderr"][:, 1, :], s.std() / np.sqrt(5), rtol=0.08)
    np.testing.assert_allclose(jm["cv"][:, 2, :], sd / abs(s.mean()))
    assert np.isnan(jm["cv"][:, 0, :]).all()                 # one direction has no spread
    # K = 1: expected |s_k − mean| / |mean| averaged over k (400 random draws of one direction)
    exp1 = np.mean(np.abs(s - s.mean())) / abs(s.mean())
    assert jm["deviation"][0, 0, 0] == pytest.approx(exp1, rel=0.1)
    ok = meets(jm, -1)
    assert ok[2].all() and not ok[0].any()           # stderr at K=1 is sd ≈ 0.12 > 0.1; no CV for one direction


def test_bootstrap_stderr_can_disagree_with_the_formula():
    """Two distinct values repeated (a two-point distribution): the bootstrap follows the resampling, and a
    constant set gives zero — the check stderr ≈ std/√K is a measurement, not an identity."""
    from lamda.stats import bootstrap_stderr
    rng = np.random.default_rng(0)
    v = np.array([[-3.0] * 14 + [3.0]])                       # heavy outlier
    b = bootstrap_stderr(v, 5, 5000, rng)[0]
    assert b == pytest.approx(v.std() / np.sqrt(5), rel=0.1)
    assert bootstrap_stderr(np.full((1, 15), -2.0), 5, 100, rng)[0] == 0.0


def test_stats_helpers_hand_computed():
    from scipy import stats as st

    from lamda.stats import cv, fmt_ci, mean_ci, pearson
    m, h, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and h == pytest.approx(st.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
    m1, h1, n1 = mean_ci([0.5])
    assert (m1, n1) == (0.5, 1) and np.isnan(h1)
    assert fmt_ci(m1, h1, n1) == "0.500 ± n/a" and fmt_ci(np.nan, np.nan, 0) == "n/a"
    assert cv([1.0, 3.0]) == pytest.approx(np.std([1.0, 3.0], ddof=1) / 2.0)
    assert np.isnan(cv([2.0]))
    c = pearson([1, 2, 3, 4, 5, 6], [1.1, 1.9, 3.2, 3.9, 5.1, 6.2])
    assert c.n == 6 and c.r > 0.99 and c.p < 0.001 and c.ci_lo <= c.r <= c.ci_hi and "n = 6" in c.text()
    assert "not enough data" in pearson([1, 2], [2, 3]).text()


class _TwoClassHead(torch.nn.Module):
    """Logits (s, −s) from s(x): ``anisotropic`` → s = 3·x[0] (one input coordinate matters); else s = |x|²
    (every direction is equivalent at points near 0)."""

    def __init__(self, anisotropic: bool):
        super().__init__()
        self.anisotropic = anisotropic
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        f = x.flatten(1)
        s = 3.0 * f[:, :1] if self.anisotropic else (f * f).sum(1, keepdim=True)
        s = s * self.scale
        return torch.cat([s, -s], dim=1)


def _measured_cv(anisotropic: bool, mode: str) -> float:
    from lamda.stats import cv
    from lamda.measure import LambdaMeter, MeasureConfig
    g = torch.Generator().manual_seed(0)
    x = (0.05 if not anisotropic else 0.5) * torch.randn(20, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(20, dtype=torch.long)
    model = _TwoClassHead(anisotropic).double()
    meter = LambdaMeter(x, y, MeasureConfig(points=20, directions=15, order=6, seed=3, backend="taylor",
                                            direction_mode=mode))
    lam = meter.measure(model)["lambda_values"]
    return float(cv(lam))


def test_cv_separates_anisotropic_from_isotropic_directions():
    """Truly anisotropic loss (one input coordinate matters) → large CV over the 15 shared directions; an isotropic
    one (|x|² near 0) → small CV; averaging each 'direction' over 20 per-point vectors hides the anisotropy."""
    aniso, iso = _measured_cv(True, "shared"), _measured_cv(False, "shared")
    assert aniso > 0.2, aniso
    assert iso < 0.05, iso
    assert _measured_cv(True, "per-point") < aniso / 2


def test_cv_and_k_convergence_csvs_match_the_npz(smoke_run):
    """Recompute CV over directions and the K-convergence numbers from lambda_data.npz alone and compare with the
    CSVs the analysis of the smoke run wrote."""
    from lamda.studies.diagnostic.validation.metrics import REF_WINDOW, joint_metrics
    from lamda.stats import cv
    from lamda.measure import fit_lambda
    out = smoke_run[0]
    for rel in ("01_baseline", "06_sam/sam_rho_0.1"):
        label = result_files.read_json(out / rel / "config.json")["label"]
        z = result_files.read_npz(out / rel / "lambda_data.npz")
        lam = fit_lambda(z["log_abs_derivatives"], REF_WINDOW)                     # [M, 15]
        np.testing.assert_allclose(lam, z["lambda_values"], rtol=1e-10, atol=1e-12)
        ts = [r for r in result_files.read_csv(out / "validation_analysis/temporal_directional_stability/temporal_stability.csv")
              if r["method"] == label]
        np.testing.assert_allclose([r["cv"] for r in ts], np.std(lam, 1, ddof=1) / np.abs(lam.mean(1)), rtol=1e-9)
        np.testing.assert_allclose([r["cv"] for r in ts], cv(lam, 1), rtol=1e-12)
        dc = [r for r in result_files.read_csv(out / "validation_analysis/direction_convergence/direction_convergence.csv")
              if r["method"] == label]
        assert [r["K"] for r in dc] == list(range(1, 16))
        assert dc[-1]["lambda_final"] == pytest.approx(lam[-1].mean(), rel=1e-12)
        assert dc[-1]["deviation_final"] == pytest.approx(0.0, abs=1e-12)
        assert dc[-1]["cv_final"] == pytest.approx(cv(lam[-1]), rel=1e-12)
        for r in dc:
            assert r["stderr_formula_final"] == pytest.approx(lam[-1].std(ddof=1) / np.sqrt(r["K"]), rel=1e-9)
        jm = joint_metrics(z["log_abs_derivatives"], ks=tuple(range(1, 16)), windows=(REF_WINDOW,))
        np.testing.assert_allclose([r["stderr_final"] for r in dc], jm["stderr"][-1, :, 0], rtol=1e-12)
        np.testing.assert_allclose([r["deviation_final"] for r in dc], jm["deviation"][-1, :, 0], rtol=1e-12,
                                   atol=1e-15)


def test_shared_meter_stores_the_directions_it_used():
    """Shared mode: the stored float32 directions [K, prod(S)] reproduce the measurement with the autograd reference
    (every point along the same u_k); chunks use the same directions; the per-point mode stores none."""
    import lamda_ext
    from lamda.measure import LambdaMeter, MeasureConfig
    from lamda.models import SigmoidMLP
    torch.manual_seed(0)
    model = SigmoidMLP(hidden=(16,)).eval()
    x, y = torch.randn(7, 1, 28, 28), torch.randint(0, 10, (7,))
    meter = LambdaMeter(x, y, MeasureConfig(points=7, directions=15, order=4, seed=5, chunk_size=3,
                                            direction_mode="shared"))
    r = meter.measure(model)
    assert r["directions"].shape == (15, 784) and r["directions"].dtype == np.float32
    u = torch.from_numpy(r["directions"]).reshape(15, 1, 28, 28)
    ref = lamda_ext.directional_derivs(model.double(), x.double(), y, order=4, directions=u.double(),
                                       backend="autograd")
    np.testing.assert_allclose(r["derivatives_per_point"], ref.detach().numpy(), rtol=2e-3, atol=1e-6)
    arr = meter.run_arrays([r, r])
    assert arr["directions"].shape == (2, 15, 784) and str(arr["direction_mode"]) == "shared"
    pp = LambdaMeter(x, y, MeasureConfig(points=7, directions=15, order=4, seed=5, chunk_size=3))
    assert "directions" not in pp.measure(model.float()) and "directions" not in pp.run_arrays([])
    with pytest.raises(ValueError, match="direction_mode"):
        MeasureConfig(direction_mode="bogus")


def test_two_seeds_per_point_mode_in_two_shards(tmp_path, capsys):
    """The offline digits set (no data root) with --seeds 3,4 --direction-mode per-point, in two shards: the
    first shard runs every other cell and writes no analysis, the second fills the grid and writes it; one
    seed_<s>/ folder per seed in every run folder, the tables give mean ± 95 % CI over seeds, and per-point
    directions are drawn per point (none stored). Another configuration or protocol in the same folder is
    refused, as are a bad flag and a shard out of range."""
    from scipy import stats as st
    out = tmp_path / "out"
    common = ["run", "diagnostic", "--preset", "smoke", *DRAFT, "--methods", "baseline,sam", "--epochs", "1",
              "--points", "4", "--seeds", "3,4", "--direction-mode", "per-point", "--out", str(out), "--no-progress"]
    cells = [out / rel / f"seed_{seed}" for rel in ("01_baseline", "06_sam/sam_rho_0.1") for seed in (3, 4)]
    assert main(common + ["--shard", "0/2"]) == 0
    done = [(c / "final_model.pt").is_file() for c in cells]
    assert done == [True, False, True, False], done
    assert not (out / "summary.md").exists()
    capsys.readouterr()
    assert main(common + ["--shard", "1/2"]) == 0
    printed = capsys.readouterr().out
    assert f"summary: {out / 'summary.md'}" in printed and f"figures: {out / 'validation_analysis'}" in printed
    check_dataset_tree(out, ["01_baseline", "06_sam/sam_rho_0.1"], epochs=1, points=4, seeds=(3, 4),
                       direction_mode="per-point")
    for d in cells:
        assert result_files.read_json(d / "config.json")["seed"] == int(d.name.split("_")[1])
    table = result_files.read_csv(out / "00_summary" / "summary_statistics.csv")
    base = next(t for t in table if t["method"] == "baseline")
    accs = [result_files.read_csv(out / "01_baseline" / f"seed_{s}" / "training_metrics.csv")[-1]["test_acc"] for s in (3, 4)]
    assert base["n_seeds"] == 2 and base["test_acc_mean"] == pytest.approx(np.mean(accs))
    assert base["test_acc_ci95"] == pytest.approx(st.t.ppf(0.975, 1) * np.std(accs, ddof=1) / np.sqrt(2))
    summary = (out / "summary.md").read_text()
    assert "## digits" in summary
    assert "| baseline | 2 |" in summary and "per-point" in summary and "seed(s) 3, 4" in summary
    other_protocol = [a for a in common if a not in ("--direction-mode", "per-point")]
    assert main(other_protocol) == 2
    assert main(["run", "diagnostic", "--preset", "smoke", *DRAFT, "--out", str(out), "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        main(common + ["--shard", "2/2", "--bogus"])
    assert main(common + ["--shard", "2/2"]) == 2
