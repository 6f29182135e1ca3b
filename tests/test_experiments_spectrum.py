"""`lamda run spectrum --preset smoke`: the study's file names and columns, and the eigenvalues of one model
against a dense float64 ``torch.linalg.eigh`` of its Hessian."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lamda import io as lio
from lamda.cli import main
from lamda.data import load_dataset
from lamda.experiments.spectrum import MODEL_COLUMNS, l2_grid, l2_label
from lamda.models import SigmoidMLP



def test_l2_grid_is_the_studys_grid():
    g = l2_grid(0.09, 451)
    assert g.shape == (451,) and g[0] == 0.0 and g[-1] == pytest.approx(0.09)
    np.testing.assert_allclose(np.diff(g), 0.0002, rtol=1e-9)
    assert l2_label(g[1]) == "0.00020" and l2_label(0.09) == "0.09000"
    with pytest.raises(ValueError):
        l2_grid(0.09, 0)


def test_spectrum_smoke_files_and_dense_eigh(data_root, tmp_path):
    out = tmp_path / "spectrum"
    # a tiny MLP (784-2-2-10, P = 1606) so that the dense Hessian is cheap; tight Lanczos tolerance
    assert main(["run", "spectrum", "--preset", "smoke", "--data-root", str(data_root), "--out", str(out),
                 "--hidden", "2,2", "--tol", "1e-10"]) == 0
    cfg = lio.read_json(out / "config.json")
    k, n_h = cfg["settings"]["k"], cfg["settings"]["hessian_samples"]
    for f in ("summary.md", "spectrum.npz", "spectrum_vs_l2.png", "lambda_max_vs_test_accuracy.png",
              "experiment_config.json"):
        assert (out / f).is_file(), f
    rows = lio.read_csv(out / "Model-42.csv")
    assert list(rows[0]) == MODEL_COLUMNS
    assert [r["L2_strength"] for r in rows] == pytest.approx([0.0, 0.09])
    P = 784 * 2 + 2 + 2 * 2 + 2 + 2 * 10 + 10
    for lab in ("0.00000", "0.09000"):
        for f in (f"gradients-42-{lab}.csv", f"Hessian-eigenvalues-42-{lab}.csv",
                  f"Hessian-eigenvectors-42-{lab}.csv", f"model_weights-42-{lab}.pth"):
            assert (out / f).is_file(), f
        g = lio.read_csv(out / f"gradients-42-{lab}.csv")
        assert list(g[0]) == ["parameter", "flat_index", "gradient"] and len(g) == P
        assert (out / f"Hessian-eigenvalues-42-{lab}.csv").read_text().splitlines()[0] == "index,eigenvalue"
        with open(out / f"Hessian-eigenvectors-42-{lab}.csv") as fh:
            assert fh.readline().strip().split(",") == ["param_index"] + [f"eigvec_{i}" for i in range(1, k + 1)]
    z = lio.read_npz(out / "spectrum.npz")
    assert z["eigenvalues"].shape == (1, 2, k)

    # dense float64 Hessian of the mean cross-entropy over the same training samples, for the L2 = 0.09 model
    lab = "0.09000"
    model = SigmoidMLP(hidden=(2, 2)).double().eval()
    model.load_state_dict(torch.load(out / f"model_weights-42-{lab}.pth", weights_only=True))
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
    dense = torch.linalg.eigh(0.5 * (H + H.T)).eigenvalues.flip(0)[:k].numpy()
    rows_e = lio.read_csv(out / f"Hessian-eigenvalues-42-{lab}.csv")
    ours = np.array([r["eigenvalue"] for r in rows_e])
    assert [r["index"] for r in rows_e] == list(range(1, k + 1))
    np.testing.assert_allclose(ours, dense, rtol=1e-6, atol=1e-9 * abs(dense[0]))
    # and the first stored eigenvector is one: ‖H v − λ v‖ small (the CSV keeps 9 significant digits)
    V = np.loadtxt(out / f"Hessian-eigenvectors-42-{lab}.csv", delimiter=",", skiprows=1)
    assert V.shape == (P, k + 1)
    v = torch.from_numpy(V[:, 1])
    assert float(torch.linalg.norm(H @ v - ours[0] * v)) < 1e-6 * abs(ours[0]) * float(v.norm()) + 1e-7
    # and the stored gradient is the gradient of the same loss
    gcsv = np.array([r["gradient"] for r in lio.read_csv(out / f"gradients-42-{lab}.csv")])
    gref = torch.func.grad(loss)(flat0).numpy()
    np.testing.assert_allclose(gcsv, gref, rtol=1e-9, atol=1e-12)
