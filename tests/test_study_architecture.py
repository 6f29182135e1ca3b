"""`lamda run landscape --preset smoke` (CIFAR-10): the results folder, its column names, and consistency;
the study's model sizes; the summary's definitions; flag validation; the CI helpers of the summary."""
import numpy as np
import pytest
from lamda import result_files
from lamda.cli import main
from lamda.stats import mean_ci, pearson_ci
from lamda.studies.architecture.analysis import condition_number
from lamda.studies.architecture.config import CONNECTIVITY_COLUMNS, RESULT_COLUMNS
from lamda.models import STUDY_SIZES, build_model, count_parameters
from scipy import stats
from tests._helpers import DRAFT

TOP_FILES = ["config.json", "experiment_config.json", "summary.md", "summary_table.png", "results.csv",
             "connectivity.csv", "correlations.csv", "landscape_data.npz", "training_curves.png",
             "hessian_spectrum.png", "mode_connectivity.png", "metrics_comparison.png", "correlation_analysis.png",
             "surface_contour.png", "surface_3d_cnn.png", "surface_3d_resnet.png"]
RUN_FILES = ["training_metrics.csv", "config.json", "final_model.pt", "analysis.json", "hessian.npz"]


@pytest.mark.parametrize("name, target", [("cifar_cnn", 1.8e6), ("cifar_resnet", 2.1e6)])
def test_study_model_sizes_within_ten_percent(name, target):
    n = count_parameters(build_model(name, in_channels=3, image_size=32, **STUDY_SIZES[name]))
    assert abs(n / target - 1) <= 0.10, n


def test_condition_number_definition():
    assert condition_number(10.0, -2.0) == 5.0
    assert condition_number(10.0, 4.0) == 2.5          # no negative eigenvalue found: λ_min > 0
    assert np.isnan(condition_number(10.0, 0.0)) and np.isnan(condition_number(float("nan"), -1.0))


def test_mean_ci_and_pearson_ci_hand_computed():
    m = mean_ci([1.0, 2.0, 3.0])
    assert m.mean == 2.0 and m.n == 3
    assert m.half == pytest.approx(4.302652729911275 / np.sqrt(3))     # t_{0.975, 2} · s / √n with s = 1
    one = mean_ci([5.0, float("nan")])
    assert one.n == 1 and np.isnan(one.half) and "CI n/a" in one.text()
    x = np.arange(8.0)
    y = np.array([0.1, 1.3, 1.9, 3.2, 4.1, 4.8, 6.3, 6.9])
    c = pearson_ci(x, y)
    assert c.corr.r == pytest.approx(stats.pearsonr(x, y).statistic) and c.corr.n == 8
    assert c.lo <= c.corr.r <= c.hi <= 1.0 and c.lo > 0.9
    assert pearson_ci(x, y).lo == c.lo                                   # seeded
    small = pearson_ci(x[:4], y[:4])
    assert np.isnan(small.lo) and "n < 5" in small.text()


@pytest.mark.parametrize("flag, value", [("--k", "3"), ("--k", "abc"), ("--epochs", "0"), ("--archs", "cnn,vit"),
                                         ("--archs", "cnn,cnn")])
def test_meaningless_flags_fail_in_the_parser(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["run", "landscape", "--preset", "smoke", *DRAFT, "--out", str(tmp_path / "x"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lamda run landscape: error: argument") and flag in err[-1]
    assert not (tmp_path / "x").exists()


def test_landscape_smoke_writes_every_file(data_root, tmp_path, capsys):
    out = tmp_path / "landscape"
    argv = ["run", "landscape", "--preset", "smoke", *DRAFT, "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for f in TOP_FILES:
        assert (out / f).is_file(), f
    cfg = result_files.read_json(out / "config.json")
    s = cfg["settings"]
    rows = result_files.read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert [(r["arch"], r["seed"]) for r in rows] == [("cnn", 42), ("cnn", 43), ("resnet", 42), ("resnet", 43)]
    for r in rows:
        rd = out / "runs" / r["arch"] / f"seed_{r['seed']}"
        for f in RUN_FILES:
            assert (rd / f).is_file(), f
        z = result_files.read_npz(rd / "hessian.npz")
        top, tc = z["top_eigenvalues"], z["top_converged"].astype(bool)
        neg, nc = z["negative_eigenvalues"], z["negative_converged"].astype(bool)
        assert top.shape == (s["k"],) and s["k"] >= 15 and neg.shape == (s["k_neg"],)
        assert np.all(np.diff(top) <= 0) and np.all(np.diff(neg) >= 0)        # LA descending, SA ascending
        np.testing.assert_array_equal(tc, z["top_rel_residual"] <= s["eig_tol"])
        conv = np.concatenate([top[tc], neg[nc]])
        # the table's eigenvalue statistics use the converged pairs only
        assert r["n_eigs_converged"] == conv.size and r["n_eigs_computed"] == top.size + neg.size
        assert r["lanczos_converged"] == int(tc.all() and nc.all())
        assert r["n_negative"] == int((conv < 0).sum())
        if tc.any():
            assert r["lambda_max"] == top[tc].max()
            assert r["lambda_min"] == conv.min() <= r["lambda_max"]
            assert r["condition_number"] == pytest.approx(r["lambda_max"] / abs(r["lambda_min"]))
        assert np.isfinite(r["sharpness"]) and np.isfinite(r["sharpness_random"])
        assert r["hessian_hvps"] > 0
    conn = result_files.read_csv(out / "connectivity.csv")
    assert list(conn[0]) == CONNECTIVITY_COLUMNS and [c["arch"] for c in conn] == ["cnn", "resnet"]
    for c in conn:
        path = result_files.read_json(out / "pairs" / f"connectivity_{c['arch']}_42-43.json")
        L = np.asarray(path["losses"])
        assert c["barrier"] == pytest.approx(L.max() - min(L[0], L[-1]))
        assert c["excess"] >= 0.0 and 0.0 <= c["barrier_alpha"] <= 1.0
        assert c["min_acc"] <= min(c["acc_a"], c["acc_b"])
        assert c["n_eval"] == cfg["test_size"]                     # the model table's test set
        assert c["bn_reestimated"] == int(c["arch"] == "resnet")
    cnn_table_acc = [r["test_acc"] for r in rows if r["arch"] == "cnn"]
    assert [conn[0]["acc_a"], conn[0]["acc_b"]] == pytest.approx(cnn_table_acc)   # no BN: the same numbers
    corr = result_files.read_csv(out / "correlations.csv")
    assert [c["quantity"] for c in corr] == ["sharpness_vs_test_acc", "lambda_max_vs_test_acc",
                                             "condition_number_vs_test_acc"]
    z = result_files.read_npz(out / "pairs" / "surface_cnn.npz")
    res = s["surface_res"]
    assert res % 2 == 1 and z["losses"].shape == (res, res) and np.all(np.isfinite(z["losses"]))
    assert z["alphas"][res // 2] == 0.0 and z["betas"][res // 2] == 0.0          # trained point on a node
    text = (out / "summary.md").read_text()
    for phrase in ("Caveat: smoke preset", "## Mode connectivity", "Pearson", "Condition number estimate κ̂",
                   "# neg / conv.", "BN re-estimated", "excess over line", "parameters (", "95 % CI",
                   "1,808,276", "2,127,618"):
        assert phrase in text, phrase
    for r in rows:
        assert f"{r['n_params']:,}" in text
    # `lamda analyze` regenerates every file from the folder
    for f in TOP_FILES[2:]:
        (out / f).unlink()
    assert main(["analyze", str(out), *DRAFT]) == 0
    for f in TOP_FILES:
        assert (out / f).is_file(), f
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
