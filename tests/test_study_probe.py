"""`lamda run probe`: the smoke run (every file, columns, the matched-lr SGD row, running-reference lr scale,
analyze, resume), the smoothing and paired-difference helpers, and range checks of the flags."""
import math

import numpy as np
import pytest

from tests._helpers import DRAFT, DRAFT_DPI, check_analyze_and_resume
from lamda import result_files
from lamda.cli import main
from lamda.studies.probe.analysis import paired_difference
from lamda.studies.probe.config import EPOCH_COLUMNS, MIN_SCALE, OPTIMIZERS, STEP_COLUMNS, grid_cells
from lamda.studies.probe.run import matched_lr
from lamda.studies.probe.series import smooth

TOP_FILES = ["config.json", "experiment_config.json", "summary.md", "results.csv", "summary_table.csv",
             "probe_data.npz", "curvature_over_training.png", "lr_scale.png", "accuracy_over_training.png"]
RESULT_COLUMNS = ["optimizer", "seed", "final_test_acc", "final_test_loss", "final_train_loss", "mean_curvature",
                  "final_curvature", "mean_lr", "final_lr", "train_time_s", "scale_mean", "scale_min", "scale_max",
                  "frac_scale_above_1", "frac_scale_below_1", "frac_scale_at_max", "frac_scale_at_min"]


def test_smooth_trailing_mean_hand_values():
    np.testing.assert_allclose(smooth([1.0, 3.0, 5.0, 7.0], 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(smooth([1.0, np.nan, 5.0, 7.0], 3), [1.0, 1.0, 3.0, 6.0])
    np.testing.assert_allclose(smooth([2.0, 4.0], 1), [2.0, 4.0])
    assert np.isnan(smooth([np.nan, 1.0], 1)[0])
    with pytest.raises(ValueError, match="window"):
        smooth([1.0], 0)


def test_paired_difference_hand_values():
    rows = [{"optimizer": "probe", "seed": 1, "acc": 0.9}, {"optimizer": "probe", "seed": 2, "acc": 0.8},
            {"optimizer": "sgd", "seed": 1, "acc": 0.7}, {"optimizer": "sgd", "seed": 2, "acc": 0.7},
            {"optimizer": "sgd", "seed": 3, "acc": 0.1}]
    m, h, n = paired_difference(rows, "probe", "sgd", "acc")      # differences 0.2, 0.1 (seed 3 unpaired)
    assert n == 2 and m == pytest.approx(0.15)
    assert h == pytest.approx(12.7062047 * (0.1 / math.sqrt(2)) / math.sqrt(2), rel=1e-6)


def test_grid_cells_put_the_matched_control_in_its_probe_cell():
    cells = grid_cells({"seeds": [1, 2], "optimizers": list(OPTIMIZERS)})
    assert [c.key for c in cells] == ["sgd/seed_1", "adam/seed_1", "sam/seed_1", "probe+sgd_matched/seed_1",
                                      "sgd/seed_2", "adam/seed_2", "sam/seed_2", "probe+sgd_matched/seed_2"]
    assert cells[3].outputs == ("runs/probe/seed_1", "runs/sgd_matched/seed_1")
    assert cells[3].params == {"optimizers": ["probe", "sgd_matched"], "seed": 1}
    assert [c.key for c in grid_cells({"seeds": [3], "optimizers": ["sgd", "probe"]})] == ["sgd/seed_3",
                                                                                         "probe/seed_3"]


def test_matched_lr_needs_a_finished_probe_run(tmp_path):
    with pytest.raises(ValueError, match="probe/seed_7"):
        matched_lr(tmp_path, 7)


def test_probe_smoke_writes_every_file(data_root, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["run", "probe", "--preset", "smoke", *DRAFT, "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for f in TOP_FILES:
        assert (out / f).is_file(), f
    cfg = result_files.read_json(out / "config.json")
    s = cfg["settings"]
    assert s["ref_decay"] == 0.7
    rows = result_files.read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert [r["optimizer"] for r in rows] == list(OPTIMIZERS)
    table = {r["optimizer"]: r for r in result_files.read_csv(out / "summary_table.csv")}
    assert set(table) == set(OPTIMIZERS)                                # incl. the matched-lr SGD row
    for col in ("final_test_acc_mean", "final_test_acc_ci95", "mean_curvature_mean", "final_curvature_mean",
                "mean_lr_mean"):
        assert col in table["sgd"], col
    n_steps = math.ceil(cfg["train_size"] / s["batch"]) * s["epochs"]
    steps = {}
    for o in OPTIMIZERS:
        rd = out / "runs" / o / "seed_42"
        st = steps[o] = result_files.read_csv(rd / "steps.csv")
        assert list(st[0]) == STEP_COLUMNS and len(st) == n_steps
        assert [r["probed"] for r in st] == [int(i % s["probe_every"] == 0) for i in range(n_steps)]
        curv = np.array([r["curvature"] for r in st if r["probed"]])
        assert np.all(np.isfinite(curv)) and np.all(curv > 0)          # logged for every optimizer
        ep = result_files.read_csv(rd / "epochs.csv")
        assert list(ep[0]) == EPOCH_COLUMNS and len(ep) == s["epochs"]
        assert result_files.load_checkpoint(rd / "final_model.pt")["complete"]
        lrs = np.array([r["lr"] for r in st])
        if o == "probe":      # lr = base · scale, scale in [0.1, max_scale], logged with its reference
            sc = np.array([r["scale"] for r in st])
            np.testing.assert_allclose(lrs, s["sgd_lr"] * sc, rtol=1e-12)
            assert np.all(sc >= MIN_SCALE - 1e-12) and np.all(sc <= cfg["max_scale"] + 1e-12)
            assert sc[0] == 1.0                                          # the first probe is the reference
            ref = np.array([r["reference"] for r in st])
            c = np.array([r["curvature"] for r in st])
            assert ref[0] == c[0]
            # the running reference: the EMA of log c over the earlier probes
            pr = [i for i, r in enumerate(st) if r["probed"]]
            expect, beta = c[pr[0]], s["ref_decay"]
            for a, b in zip(pr, pr[1:]):
                expect = expect ** beta * c[a] ** (1 - beta)
                assert ref[b] == pytest.approx(expect, rel=1e-12)
        else:
            assert all(r["scale"] is None and r["reference"] is None for r in st)
            if o == "adam":
                assert np.all(lrs == s["adam_lr"])
            elif o in ("sgd", "sam"):
                assert np.all(lrs == s["sgd_lr"])
    # the matched-lr control runs at the probe's mean lr, constant
    m = np.mean([r["lr"] for r in steps["probe"]])
    assert np.allclose([r["lr"] for r in steps["sgd_matched"]], m, rtol=1e-12)
    assert result_files.read_json(out / "runs" / "sgd_matched" / "seed_42" / "config.json")["lr"] == pytest.approx(m)
    by = {r["optimizer"]: r for r in rows}
    assert by["sgd_matched"]["mean_lr"] == pytest.approx(by["probe"]["mean_lr"])
    last_ep = [r["curvature"] for r in steps["sgd"] if r["probed"] and r["epoch"] == s["epochs"]]
    assert by["sgd"]["final_curvature"] == pytest.approx(np.mean(last_ep))
    z = result_files.read_npz(out / "probe_data.npz")
    for o in OPTIMIZERS:
        assert z[f"{o}_seed42_curvature"].shape == (len(range(0, n_steps, s["probe_every"])),)
        assert z[f"{o}_seed42_test_acc"].shape == (s["epochs"],)
    assert z["probe_seed42_scale"].shape == (n_steps,)
    from PIL import Image
    for f in TOP_FILES[-3:]:
        with Image.open(out / f) as im:
            assert round(im.info["dpi"][0]) == DRAFT_DPI, f
    text = (out / "summary.md").read_text()
    for phrase in ("| optimizer |", "| sgd_matched |", "Caveat: `smoke` preset", "running reference",
                   "probe − sgd_matched", "final curvature", "± n/a"):
        assert phrase in text, phrase
    check_analyze_and_resume(main, out, argv, TOP_FILES, capsys, "probe+sgd_matched/seed_42", "runs/probe/seed_42")


def test_sgd_matched_without_probe_is_refused(tmp_path, capsys):
    assert main(["run", "probe", "--preset", "smoke", *DRAFT, "--out", str(tmp_path / "p"), "--optimizers",
                 "sgd,sgd_matched"]) == 2
    assert "needs probe" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--eps", "inf"), ("--eps", "0"), ("--eps", "-1e-3"), ("--eps", "nan"),
                                         ("--max-scale", "0.5"), ("--max-scale", "inf"), ("--probe-every", "0"),
                                         ("--probe-dirs", "0"), ("--epochs", "0"), ("--epochs", "1.5"),
                                         ("--ref-decay", "1"), ("--ref-decay", "0")])
def test_probe_flags_refuse_meaningless_values(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "probe", "--preset", "smoke", *DRAFT, "--out", str(tmp_path / "x"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert flag in err[-1] and "error" in err[-1]
    assert not (tmp_path / "x").exists()
