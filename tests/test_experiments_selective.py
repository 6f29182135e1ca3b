"""`lamda run selective --preset smoke`: the results folder, its column names, resume; boundary-point selection."""
import numpy as np
import pytest
import torch

from lamda import io as lio
from lamda.cli import main
from lamda.experiments.selective import CONDITIONS, PAIR_NAMES, boundary_points, selectivity_rows

RESULT_COLUMNS = ["condition", "seed", "test_acc", "test_loss", "train_acc", "lambda_4v9", "lambda_3v8", "lambda_5v6",
                  "n_boundary_4v9", "n_boundary_3v8", "n_boundary_5v6", "train_time_s", "penalty_share_mean",
                  "penalty_share_final"]
TOP_FILES = ["config.json", "experiment_config.json", "summary.md", "results.csv", "summary_table.csv",
             "selectivity.csv", "selective_data.npz", "lambda_per_pair.png", "selectivity_index.png",
             "penalty_share.png"]
RUN_FILES = ["training_metrics.csv", "config.json", "boundary_lambda.npz", "boundary_lambda.json", "final_model.pt"]



def test_boundary_points_hand_made():
    # rows: top-2 = {4, 9} with p_max 0.5 (margin 0.1); {4, 9} with p_max 0.9 (outside [0.2, 0.8]);
    # top-2 = {4, 3} (wrong pair); {9, 4} with p_max 0.45 (margin 0.0); {4, 9} p_max 0.8 exactly (margin 0.7)
    p = torch.full((5, 10), 0.0)
    p[0, 4], p[0, 9], p[0, 0] = 0.5, 0.4, 0.1
    p[1, 4], p[1, 9], p[1, 0] = 0.9, 0.06, 0.04
    p[2, 4], p[2, 3], p[2, 9] = 0.5, 0.3, 0.2
    p[3, 9], p[3, 4], p[3, 1] = 0.45, 0.45, 0.10
    p[4, 4], p[4, 9], p[4, 1] = 0.8, 0.1, 0.1 - 1e-3
    assert boundary_points(p, (4, 9)).tolist() == [3, 0, 4]
    assert boundary_points(p, (4, 9), max_points=2).tolist() == [3, 0]
    assert boundary_points(p, (3, 8)).tolist() == []


def test_selectivity_index_against_hand_values():
    rows = [{"condition": "baseline", "seed": 1, "lambda_4v9": -5.0, "lambda_3v8": -4.0, "lambda_5v6": -3.0},
            {"condition": "selective_49", "seed": 1, "lambda_4v9": -6.0, "lambda_3v8": -4.5, "lambda_5v6": -2.5},
            {"condition": "selective_38", "seed": 1, "lambda_4v9": -5.0, "lambda_3v8": None, "lambda_5v6": -3.0}]
    sel = {(r["condition"], r["target_pair"]): r for r in selectivity_rows(rows)}
    r = sel[("selective_49", "4v9")]
    assert r["delta_target"] == pytest.approx(-1.0)
    assert r["delta_others"] == pytest.approx(0.0)         # (-0.5 + 0.5) / 2
    assert r["selectivity_index"] == pytest.approx(-1.0)
    assert np.isnan(sel[("selective_38", "3v8")]["selectivity_index"])   # missing λ → missing index


def test_selective_smoke_writes_every_file(data_root, tmp_path, capsys):
    out = tmp_path / "selective"
    argv = ["run", "selective", "--preset", "smoke", "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for f in TOP_FILES:
        assert (out / f).is_file(), f
    rows = lio.read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert [r["condition"] for r in rows] == list(CONDITIONS)
    table = lio.read_csv(out / "summary_table.csv")
    assert [r["condition"] for r in table] == list(CONDITIONS)
    for col in ("test_acc_mean", "test_acc_std", "lambda_4v9_mean", "n_boundary_5v6_mean", "penalty_share_mean_mean"):
        assert col in table[0], col
    sel = lio.read_csv(out / "selectivity.csv")
    assert list(sel[0]) == ["condition", "seed", "target_pair", "delta_target", "delta_others", "selectivity_index"]
    assert {(r["condition"], r["target_pair"]) for r in sel} == {
        ("selective_49", "4v9"), ("selective_38", "3v8"), ("global", "4v9"), ("global", "3v8")}
    z = lio.read_npz(out / "selective_data.npz")
    assert z["lambda_per_pair"].shape == (4, 1, 3) and z["boundary_counts"].shape == (4, 1, 3)
    for cond in CONDITIONS:
        rd = out / "runs" / cond / "seed_42"
        for f in RUN_FILES:
            assert (rd / f).is_file(), f"{cond}/{f}"
        hist = lio.read_csv(rd / "training_metrics.csv")
        assert [h["epoch"] for h in hist] == [0, 1]
        if cond == "baseline":
            assert "penalty_share_lambda_penalty" not in hist[0]
        else:   # the penalty's share of the loss is logged per epoch
            assert 0.0 < hist[1]["penalty_share_lambda_penalty"] < 1.0
        bl = lio.read_json(rd / "boundary_lambda.json")
        assert set(bl) == set(PAIR_NAMES)
        for p, e in bl.items():
            assert e["n_points"] <= 30
            assert (e["lambda"] is None) == (e["n_points"] < 10)        # fewer than 10 points → missing
            if e["lambda"] is not None:
                assert np.isfinite(e["lambda"])
                d = lio.read_npz(rd / "boundary_lambda.npz")[f"derivatives_{p}"]
                assert d.shape == (e["n_points"], 4, 4)                  # K = 4, orders 1–4
    from PIL import Image
    with Image.open(out / "lambda_per_pair.png") as im:
        assert 150 <= round(im.info["dpi"][0]) <= 300
    assert "## Mean ± std over seeds" in (out / "summary.md").read_text()
    # restart: every run is skipped, nothing is retrained
    stamp = (out / "runs" / "global" / "seed_42" / "final_model.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    assert (out / "runs" / "global" / "seed_42" / "final_model.pt").stat().st_mtime_ns == stamp
    # a different setting in the same folder is refused
    assert main(argv + ["--scale", "3"]) == 2
