"""`lamda run spectrum --preset smoke`: the study's file names and columns, and the eigenvalues of one model
against a dense float64 ``torch.linalg.eigh`` of its Hessian."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lamda import result_files
from lamda.cli import main
from lamda.data import load_dataset
from lamda.studies.spectrum.analysis import is_collapsed
from lamda.studies.spectrum.config import COLLAPSE_ACC, MODEL_COLUMNS, l2_grid, l2_label
from lamda.studies.spectrum.training import train_model
from lamda.models import SigmoidMLP
from torch.func import functional_call


def test_l2_grid_is_the_studys_grid():
    g = l2_grid(0.09, 451)
    assert g.shape == (451,) and g[0] == 0.0 and g[-1] == pytest.approx(0.09)
    np.testing.assert_allclose(np.diff(g), 0.0002, rtol=1e-9)
    assert l2_label(g[1]) == "0.00020" and l2_label(0.09) == "0.09000"
    with pytest.raises(ValueError):
        l2_grid(0.09, 0)


def test_collapse_rule_and_epoch_cap_flag():
    assert COLLAPSE_ACC == 15.0
    np.testing.assert_array_equal(is_collapsed([9.8, 14.99, 15.0, 97.0]), [True, True, False, False])
    # zero weights and lr = 0: every logit is 0, every sample's loss is exactly ln 10, so the epoch loss never
    # improves after epoch 1 → patience 2 stops at epoch 3
    g = torch.Generator().manual_seed(0)
    data = type("D", (), {"x_train": torch.randn(16, 1, 28, 28, generator=g),
                          "y_train": torch.randint(0, 10, (16,), generator=g)})()
    s = dict(lr=0.0, batch=4, max_epochs=10, patience=2)

    def zero_mlp():
        m = SigmoidMLP(hidden=(3,))
        with torch.no_grad():
            for q in m.parameters():
                q.zero_()
        return m

    info = train_model(zero_mlp(), data, 0.0, s, seed=0)
    assert info["epochs"] == 3 and info["stopped_early"] is True
    info = train_model(zero_mlp(), data, 0.0, dict(s, max_epochs=2), seed=0)
    assert info["epochs"] == 2 and info["stopped_early"] is False          # the cap ended training


@pytest.mark.parametrize("flag, value", [("--hidden", "0"), ("--hidden", "128,-1"), ("--hidden", "abc"),
                                         ("--steps", "0"), ("--k", "0"), ("--l2-max", "-0.1"), ("--l2-max", "nan"),
                                         ("--tol", "0"), ("--tol", "inf"), ("--max-epochs", "0"),
                                         ("--hessian-samples", "0"), ("--which", "SA"),
                                         ("--eigvec-format", "txt")])
def test_meaningless_flags_fail_in_the_parser(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["run", "spectrum", "--preset", "smoke", "--out", str(tmp_path / "x"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lamda run spectrum: error: argument") and flag in err[-1]
    assert not (tmp_path / "x").exists()


def test_spectrum_npy_eigenvectors(data_root, tmp_path, capsys):
    out = tmp_path / "spectrum"
    argv = ["run", "spectrum", "--preset", "smoke", "--data-root", str(data_root), "--out", str(out),
            "--hidden", "2,2", "--steps", "1", "--eigvec-format", "npy", "--which", "LA"]
    assert main(argv) == 0
    cfg = result_files.read_json(out / "config.json")
    assert cfg["which"] == "LA" and cfg["settings"]["eigvec_format"] == "npy"
    d = out / "test_data"
    assert not (d / "Hessian-eigenvectors-42-0.00000.csv").exists()
    V = np.load(d / "Hessian-eigenvectors-42-0.00000.npy")
    assert V.dtype == np.float32 and V.shape == (784 * 2 + 2 + 2 * 2 + 2 + 2 * 10 + 10, cfg["settings"]["k"])
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, rtol=1e-5)
    vals = np.array([r["eigenvalue"] for r in result_files.read_csv(d / "Hessian-eigenvalues-42-0.00000.csv")])
    assert np.all(np.diff(vals) <= 0)                                           # LA: descending
    assert "Hessian-eigenvectors-{ID}-{L2}.npy" in (out / "summary.md").read_text()
    # resume: the finished cell is skipped; a lost eigenvector file makes the runner redo that model
    capsys.readouterr()
    assert main(argv) == 0
    assert "id_42/l2_0.00000 finished earlier, skipped" in capsys.readouterr().out
    (d / "Hessian-eigenvectors-42-0.00000.npy").unlink()
    assert main(argv) == 0
    assert "redone from scratch" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(d / "Hessian-eigenvectors-42-0.00000.npy"), V)   # same seed, same result


def test_spectrum_smoke_files_and_dense_eigh(data_root, tmp_path):
    out = tmp_path / "spectrum"
    # a tiny MLP (784-2-2-10, P = 1606) so that the dense Hessian is cheap; tight Lanczos tolerance
    assert main(["run", "spectrum", "--preset", "smoke", "--data-root", str(data_root), "--out", str(out),
                 "--hidden", "2,2", "--tol", "1e-10"]) == 0
    cfg = result_files.read_json(out / "config.json")
    assert cfg["which"] == "LM" and cfg["settings"]["eigvec_format"] == "csv"
    k, n_h = cfg["settings"]["k"], cfg["settings"]["hessian_samples"]
    for f in ("summary.md", "spectrum.npz", "spectrum_vs_l2.png", "lambda_max_vs_test_accuracy.png",
              "experiment_config.json"):
        assert (out / f).is_file(), f
    text = (out / "summary.md").read_text()
    for phrase in ("Caveat: smoke preset", "which = LM", "Collapsed models", "Epoch cap", "Lanczos convergence"):
        assert phrase in text, phrase
    z = result_files.read_npz(out / "spectrum.npz")
    assert z["converged"].all() and (z["rel_residual"] <= 1e-10).all()
    cells = [result_files.read_json(out / "cells" / f"42-{lab}.json") for lab in ("0.00000", "0.09000")]
    np.testing.assert_array_equal(z["collapsed"][0], [c["Test_Accuracy"] < 15.0 for c in cells])
    np.testing.assert_array_equal(z["epoch_cap"][0], [not c["stopped_early"] and c["Epochs"] == 3 for c in cells])
    out_d = out / "test_data"
    rows = result_files.read_csv(out_d / "Model-42.csv")
    assert list(rows[0]) == MODEL_COLUMNS
    assert [r["L2_strength"] for r in rows] == pytest.approx([0.0, 0.09])
    P = 784 * 2 + 2 + 2 * 2 + 2 + 2 * 10 + 10
    for lab in ("0.00000", "0.09000"):
        for f in (f"gradients-42-{lab}.csv", f"Hessian-eigenvalues-42-{lab}.csv",
                  f"Hessian-eigenvectors-42-{lab}.csv", f"model_weights-42-{lab}.pth"):
            assert (out_d / f).is_file(), f
            assert not (out / f).exists()
        g = result_files.read_csv(out_d / f"gradients-42-{lab}.csv")
        assert list(g[0]) == ["parameter", "flat_index", "gradient"] and len(g) == P
        assert (out_d / f"Hessian-eigenvalues-42-{lab}.csv").read_text().splitlines()[0] == "index,eigenvalue"
        with open(out_d / f"Hessian-eigenvectors-42-{lab}.csv") as fh:
            assert fh.readline().strip().split(",") == ["param_index"] + [f"eigvec_{i}" for i in range(1, k + 1)]
    z = result_files.read_npz(out / "spectrum.npz")
    assert z["eigenvalues"].shape == (1, 2, k)

    # dense float64 Hessian of the mean cross-entropy over the same training samples, for the L2 = 0.09 model
    lab = "0.09000"
    model = SigmoidMLP(hidden=(2, 2)).double().eval()
    model.load_state_dict(torch.load(out_d / f"model_weights-42-{lab}.pth", weights_only=True))
    data = load_dataset("mnist", root=data_root, train_size=cfg["settings"]["train"],
                        test_size=cfg["settings"]["test"], seed=cfg["seed"])
    x, y = data.x_train[:n_h].double(), data.y_train[:n_h]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert flat0.numel() == P

    def loss(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    H = torch.autograd.functional.hessian(loss, flat0, vectorize=True)
    ev = torch.linalg.eigh(0.5 * (H + H.T)).eigenvalues
    dense = ev[torch.argsort(ev.abs(), descending=True)][:k].numpy()          # LM: by |λ|, descending
    rows_e = result_files.read_csv(out_d / f"Hessian-eigenvalues-42-{lab}.csv")
    ours = np.array([r["eigenvalue"] for r in rows_e])
    assert [r["index"] for r in rows_e] == list(range(1, k + 1))
    np.testing.assert_allclose(ours, dense, rtol=1e-6, atol=1e-9 * abs(dense[0]))
    # and the first stored eigenvector is one: ‖H v − λ v‖ small (the CSV keeps 9 significant digits)
    V = np.loadtxt(out_d / f"Hessian-eigenvectors-42-{lab}.csv", delimiter=",", skiprows=1)
    assert V.shape == (P, k + 1)
    v = torch.from_numpy(V[:, 1])
    assert float(torch.linalg.norm(H @ v - ours[0] * v)) < 1e-6 * abs(ours[0]) * float(v.norm()) + 1e-7
    # and the stored gradient is the gradient of the same loss
    gcsv = np.array([r["gradient"] for r in result_files.read_csv(out_d / f"gradients-42-{lab}.csv")])
    gref = torch.func.grad(loss)(flat0).numpy()
    np.testing.assert_allclose(gcsv, gref, rtol=1e-9, atol=1e-12)
    # `lamda analyze` regenerates the tables and figures from the cells
    for f in ("summary.md", "spectrum.npz", "spectrum_vs_l2.png", "lambda_max_vs_test_accuracy.png",
              "test_data/Model-42.csv"):
        (out / f).unlink()
    assert main(["analyze", str(out)]) == 0
    for f in ("summary.md", "spectrum.npz", "spectrum_vs_l2.png", "lambda_max_vs_test_accuracy.png",
              "test_data/Model-42.csv"):
        assert (out / f).is_file(), f
    # a missing cell: analyze refuses, naming it
    (out / "cells" / "42-0.09000.json").unlink()
    assert main(["analyze", str(out)]) == 2
