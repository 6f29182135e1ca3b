"""`lamda run probe --preset smoke`: the results folder, its column names, per-step curvature logs, resume."""
import math

import numpy as np

from lamda import io as lio
from lamda.cli import main
from lamda.experiments.probe import EPOCH_COLUMNS, OPTIMIZERS, STEP_COLUMNS

TOP_FILES = ["config.json", "experiment_config.json", "summary.md", "results.csv", "summary_table.csv",
             "probe_data.npz", "curvature_over_training.png", "accuracy_over_training.png"]
RESULT_COLUMNS = ["optimizer", "seed", "final_test_acc", "final_test_loss", "final_train_loss", "mean_curvature",
                  "final_curvature", "final_lr", "train_time_s"]



def test_probe_smoke_writes_every_file(data_root, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["run", "probe", "--preset", "smoke", "--data-root", str(data_root), "--out", str(out)]
    assert main(argv) == 0
    for f in TOP_FILES:
        assert (out / f).is_file(), f
    cfg = lio.read_json(out / "config.json")
    s = cfg["settings"]
    rows = lio.read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert [r["optimizer"] for r in rows] == list(OPTIMIZERS)
    table = lio.read_csv(out / "summary_table.csv")
    assert "final_test_acc_mean" in table[0] and "mean_curvature_std" in table[0]
    n_steps = math.ceil(cfg["train_size"] / s["batch"]) * s["epochs"]
    for o in OPTIMIZERS:
        rd = out / "runs" / o / "seed_42"
        steps = lio.read_csv(rd / "steps.csv")
        assert list(steps[0]) == STEP_COLUMNS and len(steps) == n_steps
        assert [r["probed"] for r in steps] == [int(i % s["probe_every"] == 0) for i in range(n_steps)]
        curv = np.array([r["curvature"] for r in steps if r["probed"]])
        assert np.all(np.isfinite(curv)) and np.all(curv > 0)          # logged for every optimizer
        ep = lio.read_csv(rd / "epochs.csv")
        assert list(ep[0]) == EPOCH_COLUMNS and len(ep) == s["epochs"]
        assert lio.load_checkpoint(rd / "final_model.pt")["complete"]
        lrs = np.array([r["lr"] for r in steps])
        if o == "probe":      # the wrapper sets lr = base · scale with scale in [0.1, max_scale]
            assert np.all(lrs >= 0.1 * s["sgd_lr"] - 1e-12) and np.all(lrs <= cfg["max_scale"] * s["sgd_lr"] + 1e-12)
            assert lrs[0] == s["sgd_lr"]                               # the first probe is the reference
        elif o == "adam":
            assert np.all(lrs == s["adam_lr"])
        else:
            assert np.all(lrs == s["sgd_lr"])
    z = lio.read_npz(out / "probe_data.npz")
    for o in OPTIMIZERS:
        assert z[f"{o}_seed42_curvature"].shape == (len(range(0, n_steps, s["probe_every"])),)
        assert z[f"{o}_seed42_test_acc"].shape == (s["epochs"],)
    assert "| optimizer |" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(OPTIMIZERS)
