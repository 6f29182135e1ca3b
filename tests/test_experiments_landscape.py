"""`lamda run landscape --preset smoke` (CIFAR-10): the results folder, its column names, and consistency."""
import numpy as np

from lamda import io as lio
from lamda.cli import main
from lamda.experiments.landscape_study import CONNECTIVITY_COLUMNS, RESULT_COLUMNS

TOP_FILES = ["config.json", "experiment_config.json", "summary.md", "summary_table.png", "results.csv",
             "connectivity.csv", "correlations.csv", "landscape_data.npz", "training_curves.png",
             "hessian_spectrum.png", "mode_connectivity.png", "sharpness_vs_accuracy.png",
             "surface_contour_cnn.png", "surface_3d_cnn.png", "surface_contour_resnet.png", "surface_3d_resnet.png"]
RUN_FILES = ["training_metrics.csv", "config.json", "final_model.pt", "analysis.json", "hessian.npz"]



def test_landscape_smoke_writes_every_file(data_root, tmp_path, capsys):
    out = tmp_path / "landscape"
    argv = ["run", "landscape", "--preset", "smoke", "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for f in TOP_FILES:
        assert (out / f).is_file(), f
    cfg = lio.read_json(out / "config.json")
    rows = lio.read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert [(r["arch"], r["seed"]) for r in rows] == [("cnn", 42), ("cnn", 43), ("resnet", 42), ("resnet", 43)]
    for r in rows:
        rd = out / "runs" / r["arch"] / f"seed_{r['seed']}"
        for f in RUN_FILES:
            assert (rd / f).is_file(), f
        z = lio.read_npz(rd / "hessian.npz")
        assert z["top_eigenvalues"].shape == (cfg["settings"]["k"],) and cfg["settings"]["k"] >= 15
        assert np.all(np.diff(z["top_eigenvalues"]) <= 0)                     # descending
        assert r["lambda_max"] == z["top_eigenvalues"][0]
        assert r["lambda_min"] == z["negative_eigenvalues"].min() <= r["lambda_max"]
        assert np.isfinite(r["sharpness"]) and np.isfinite(r["sharpness_random"])
    conn = lio.read_csv(out / "connectivity.csv")
    assert list(conn[0]) == CONNECTIVITY_COLUMNS and [c["arch"] for c in conn] == ["cnn", "resnet"]
    for c in conn:
        assert c["barrier"] >= 0.0 and 0.0 <= c["barrier_alpha"] <= 1.0
        assert c["min_acc"] <= min(c["acc_a"], c["acc_b"])
    corr = lio.read_csv(out / "correlations.csv")
    assert [c["quantity"] for c in corr] == ["sharpness_vs_test_acc", "lambda_max_vs_test_acc"]
    assert all(c["n"] == 4 for c in corr)
    z = lio.read_npz(out / "pairs" / "surface_cnn.npz")
    res = cfg["settings"]["surface_res"]
    assert z["losses"].shape == (res, res) and np.all(np.isfinite(z["losses"]))
    text = (out / "summary.md").read_text()
    assert "## Mode connectivity" in text and "Pearson" in text
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
