"""`lamda run spectrum --preset smoke`: the study's file names and columns, and the eigenvalues of one model
against a dense float64 ``torch.linalg.eigh`` of its Hessian and (``--curvature ggn|both``) of its GGN."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lamda import result_files
from lamda.cli import main
from lamda.data import load_dataset
from lamda.studies.spectrum.analysis import is_collapsed, spectra
from lamda.studies.spectrum.comparison import compare
from lamda.studies.spectrum.report import comparison_lines
from lamda.studies.spectrum.config import COLLAPSE_ACC, MODEL_COLUMNS, curvatures, l2_grid, l2_label, model_files
from lamda.studies.spectrum.training import train_model
from lamda.models import SigmoidMLP
from torch.func import functional_call
from tests._helpers import DRAFT


P_TINY = 784 * 2 + 2 + 2 * 2 + 2 + 2 * 10 + 10          # parameters of the 784-2-2-10 MLP


def _saved_model(out, lab: str, data_root):
    """The saved float64 model of ``42-{lab}`` (eval), its Hessian data ``(x, y)`` and ``f(flat) -> logits``."""
    cfg = result_files.read_json(out / "config.json")
    model = SigmoidMLP(hidden=tuple(cfg["settings"]["hidden"])).double().eval()
    model.load_state_dict(torch.load(out / "test_data" / f"model_weights-42-{lab}.pth", weights_only=True))
    data = load_dataset("mnist", root=data_root, train_size=cfg["settings"]["train"],
                        test_size=cfg["settings"]["test"], seed=cfg["seed"])
    n_h = cfg["settings"]["hessian_samples"]
    x, y = data.x_train[:n_h].double(), data.y_train[:n_h]
    names = [n for n, _ in model.named_parameters()]
    shapes = [q.shape for q in model.parameters()]
    flat0 = torch.cat([q.detach().reshape(-1) for q in model.parameters()])

    def logits(flat):
        parts, i = {}, 0
        for n, sh in zip(names, shapes):
            parts[n] = flat[i:i + sh.numel()].reshape(sh)
            i += sh.numel()
        return functional_call(model, parts, (x,))

    return flat0, x, y, logits


def _eigenvalue_csv(path) -> np.ndarray:
    rows = result_files.read_csv(path)
    assert [r["index"] for r in rows] == list(range(1, len(rows) + 1))
    return np.array([r["eigenvalue"] for r in rows])


def test_curvature_choices_and_file_names():
    assert curvatures(None) == curvatures("hessian") == ("hessian",)
    assert curvatures("ggn") == ("ggn",) and curvatures("both") == ("hessian", "ggn")
    with pytest.raises(ValueError, match="curvature must be one of"):
        curvatures("fisher")
    assert model_files(42, 0.0, "csv") == {"gradients": "gradients-42-0.00000.csv",
                                           "eigenvalues": "Hessian-eigenvalues-42-0.00000.csv",
                                           "eigenvectors": "Hessian-eigenvectors-42-0.00000.csv",
                                           "weights": "model_weights-42-0.00000.pth"}
    f = model_files(42, 0.09, "npy", curvatures("both"))
    assert f["ggn_eigenvalues"] == "GGN-eigenvalues-42-0.09000.csv"
    assert f["ggn_eigenvectors"] == "GGN-eigenvectors-42-0.09000.npy" and len(f) == 6


def test_hessian_vs_ggn_comparison_by_hand():
    """Two models (one collapsed, left out), k = 11: the numbers of the comparison and what the summary says."""
    ggn = [8.0, 7, 6, 5, 4, 3, 2, 2, 1, 0.1, 0.05]
    hess = [8.8, 7, 6, 5, 4, 3, 2, 2, 1, 0.5, -0.2]                 # rank 1 off by 10 %; ranks 10, 11 far off
    conv = [True] * 11
    conv_h = conv[:6] + [False] + conv[7:]                          # rank 7 of the Hessian unconverged: NaN
    row = dict(eigenvalues=hess, converged=conv_h, rel_residual=[0.0] * 11, ggn_eigenvalues=ggn, ggn_converged=conv,
               ggn_rel_residual=[0.0] * 11, Test_Accuracy=90.0, epoch_cap=False)
    collapsed = dict(row, Test_Accuracy=10.0, eigenvalues=[1.0] * 11)
    rows = {42: [row, collapsed]}
    h, g = spectra(rows, [42], np.array([0.0, 0.1])), spectra(rows, [42], np.array([0.0, 0.1]), "ggn")
    cmp = compare(h, g)
    assert cmp.n == 1 and cmp.c == 10
    # descending converged values: the Hessian without rank-7's 2.0 shifts 2, 1, 0.5, -0.2 up by one rank
    hs, gs = np.array([8.8, 7, 6, 5, 4, 3, 2, 1, 0.5, -0.2]), np.array(ggn)
    d = np.abs(hs - gs[:10]) / gs[:10]
    np.testing.assert_allclose(cmp.top_diff, [np.median(d[:9])])
    np.testing.assert_allclose(cmp.top_max, [0.5])                  # rank 9: |0.5 − 1| / 1
    np.testing.assert_allclose(cmp.bulk_diff, [np.median(d[9:])])  # rank 10 only (rank 11: Hessian NaN)
    np.testing.assert_allclose(cmp.gap_hessian, [np.nan])            # λ_10 = −0.2 < 0: no ratio
    np.testing.assert_allclose(cmp.gap_ggn, [1 / 0.1])
    assert cmp.outliers_shared and cmp.bulk_departs
    lines = comparison_lines(h, g, k=11)
    assert "top C − 1 = 9: median 0.0 % (largest 50.0 %" in lines[0] and "ranks 10–11: median 300.0 %" in lines[0]
    assert "the outliers are a GGN effect in these data" in lines[0]
    assert "λ_9/λ_10 = n/a (Hessian) vs 10 (GGN)" in lines[1]
    # the Hessian's top C − 1 far from the GGN's: a null result
    far = {42: [dict(row, eigenvalues=[2 * v for v in ggn], converged=conv), collapsed]}
    lines = comparison_lines(spectra(far, [42], np.array([0.0, 0.1])), g, k=11)
    assert "do not show the outliers as a GGN effect (null result)" in lines[0]


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
                                         ("--eigvec-format", "txt"), ("--curvature", "fisher")])
def test_meaningless_flags_fail_in_the_parser(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["run", "spectrum", "--preset", "smoke", *DRAFT, "--out", str(tmp_path / "x"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lamda run spectrum: error: argument") and flag in err[-1]
    assert not (tmp_path / "x").exists()


def test_spectrum_npy_eigenvectors(data_root, tmp_path, capsys):
    out = tmp_path / "spectrum"
    argv = ["run", "spectrum", "--preset", "smoke", *DRAFT, "--data-root", str(data_root), "--out", str(out),
            "--hidden", "2,2", "--steps", "1", "--eigvec-format", "npy", "--which", "LA"]
    assert main(argv) == 0
    cfg = result_files.read_json(out / "config.json")
    assert cfg["which"] == "LA" and cfg["settings"]["eigvec_format"] == "npy"
    d = out / "test_data"
    assert not (d / "Hessian-eigenvectors-42-0.00000.csv").exists()
    V = np.load(d / "Hessian-eigenvectors-42-0.00000.npy")
    assert V.dtype == np.float32 and V.shape == (P_TINY, cfg["settings"]["k"])
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, rtol=1e-5)
    vals = np.array([r["eigenvalue"] for r in result_files.read_csv(d / "Hessian-eigenvalues-42-0.00000.csv")])
    assert np.all(np.diff(vals) <= 0)                                           # LA: descending
    assert "Hessian-eigenvectors-{ID}-{L2}.npy" in (out / "summary.md").read_text()
    # resume: the finished cell is skipped — also in a folder whose config names no curvature (read as the Hessian)
    assert cfg["curvature"] == "hessian"
    for name in ("config.json", "experiment_config.json"):
        c = result_files.read_json(out / name)
        del c["curvature"]
        result_files.write_json(out / name, c)
    assert main(["analyze", str(out), *DRAFT]) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "id_42/l2_0.00000 finished earlier, skipped" in capsys.readouterr().out
    assert result_files.read_json(out / "experiment_config.json")["curvature"] == "hessian"
    # another curvature is another run: refused, nothing rewritten
    assert main(argv + ["--curvature", "ggn"]) == 2
    assert "curvature='hessian'" in capsys.readouterr().err
    assert not (d / "GGN-eigenvalues-42-0.00000.csv").exists()
    (d / "Hessian-eigenvectors-42-0.00000.npy").unlink()
    assert main(argv) == 0
    assert "redone from scratch" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(d / "Hessian-eigenvectors-42-0.00000.npy"), V)   # same seed, same result


def test_spectrum_smoke_files_and_dense_eigh(data_root, tmp_path):
    out = tmp_path / "spectrum"
    # a tiny MLP (784-2-2-10, P = 1606) so that the dense Hessian is cheap; tight Lanczos tolerance
    assert main(["run", "spectrum", "--preset", "smoke", *DRAFT, "--data-root", str(data_root), "--out", str(out),
                 "--hidden", "2,2", "--tol", "1e-10"]) == 0
    cfg = result_files.read_json(out / "config.json")
    assert cfg["which"] == "LM" and cfg["settings"]["eigvec_format"] == "csv"
    k = cfg["settings"]["k"]
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
    P = P_TINY
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
    flat0, x, y, logits = _saved_model(out, lab, data_root)
    assert flat0.numel() == P

    def loss(flat):
        return F.cross_entropy(logits(flat), y)

    H = torch.autograd.functional.hessian(loss, flat0, vectorize=True)
    ev = torch.linalg.eigh(0.5 * (H + H.T)).eigenvalues
    dense = ev[torch.argsort(ev.abs(), descending=True)][:k].numpy()          # LM: by |λ|, descending
    ours = _eigenvalue_csv(out_d / f"Hessian-eigenvalues-42-{lab}.csv")
    assert ours.shape == (k,)
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
    assert main(["analyze", str(out), *DRAFT]) == 0
    for f in ("summary.md", "spectrum.npz", "spectrum_vs_l2.png", "lambda_max_vs_test_accuracy.png",
              "test_data/Model-42.csv"):
        assert (out / f).is_file(), f
    # a missing cell: analyze refuses, naming it
    (out / "cells" / "42-0.09000.json").unlink()
    assert main(["analyze", str(out), *DRAFT]) == 2


def _dense_ggn(logits, flat0, y) -> torch.Tensor:
    """Jᵀ H J of the mean cross-entropy: J [N·C, P] the Jacobian of the logits, H the block-diagonal softmax
    Hessians (diag(p) − ppᵀ) / N."""
    z = logits(flat0).detach()
    J = torch.func.jacrev(logits)(flat0)                                     # [N, C, P]
    p = torch.softmax(z, dim=1)
    H = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / z.shape[0]  # [N, C, C]
    HJ = torch.einsum("ncd,ndq->ncq", H, J)
    return J.reshape(-1, J.shape[-1]).t() @ HJ.reshape(-1, J.shape[-1])


def test_spectrum_both_curvatures_files_figure_and_dense_ggn(data_root, tmp_path, capsys):
    out = tmp_path / "spectrum"
    argv = ["run", "spectrum", "--preset", "smoke", *DRAFT, "--data-root", str(data_root), "--out", str(out),
            "--hidden", "2,2", "--tol", "1e-10", "--curvature", "both"]
    assert main(argv) == 0
    cfg = result_files.read_json(out / "config.json")
    assert cfg["curvature"] == "both"
    k, d = cfg["settings"]["k"], out / "test_data"
    for lab in ("0.00000", "0.09000"):
        for f in (f"Hessian-eigenvalues-42-{lab}.csv", f"Hessian-eigenvectors-42-{lab}.csv",
                  f"GGN-eigenvalues-42-{lab}.csv", f"GGN-eigenvectors-42-{lab}.csv"):
            assert (d / f).is_file(), f
        cell = result_files.read_json(out / "cells" / f"42-{lab}.json")
        assert cell["Lambda_Max"] == max(cell["eigenvalues"])                 # the primary curvature: the Hessian
        assert len(cell["ggn_eigenvalues"]) == k and all(cell["ggn_converged"]) and cell["ggn_hvps"] > k
    z = result_files.read_npz(out / "spectrum.npz")
    assert list(z["curvatures"]) == ["hessian", "ggn"]
    assert z["eigenvalues"].shape == z["ggn_eigenvalues"].shape == (1, 2, k)
    assert (z["ggn_rel_residual"] <= 1e-10).all()
    png = out / "hessian_vs_ggn_spectra.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    text = (out / "summary.md").read_text()
    for phrase in ("Hessian and GGN spectra", "Hessian vs GGN (`hessian_vs_ggn_spectra.png`", "GGN: Lanczos convergence", "GGN-eigenvalues-{ID}-{L2}.csv", "GGN-vector products"):
        assert phrase in text, phrase

    # the GGN eigenvalues of the saved L2 = 0 model: a dense float64 Jᵀ H J and torch.linalg.eigh
    flat0, x, y, logits = _saved_model(out, "0.00000", data_root)
    G = _dense_ggn(logits, flat0, y)
    torch.testing.assert_close(G, G.t(), rtol=0, atol=1e-12)
    ev = torch.linalg.eigh(0.5 * (G + G.t())).eigenvalues
    dense = ev[torch.argsort(ev.abs(), descending=True)][:k].numpy()          # LM: by |λ|, descending
    ours = _eigenvalue_csv(d / "GGN-eigenvalues-42-0.00000.csv")
    np.testing.assert_allclose(ours, dense, rtol=1e-6, atol=1e-9 * abs(dense[0]))
    V = np.loadtxt(d / "GGN-eigenvectors-42-0.00000.csv", delimiter=",", skiprows=1)
    v = torch.from_numpy(V[:, 1])
    assert float(torch.linalg.norm(G @ v - ours[0] * v)) < 1e-6 * abs(ours[0]) * float(v.norm()) + 1e-7
    # the Hessian's files hold the Hessian's numbers, not the GGN's
    H = torch.autograd.functional.hessian(lambda f: F.cross_entropy(logits(f), y), flat0, vectorize=True)
    evh = torch.linalg.eigh(0.5 * (H + H.T)).eigenvalues
    np.testing.assert_allclose(_eigenvalue_csv(d / "Hessian-eigenvalues-42-0.00000.csv"),
                               evh[torch.argsort(evh.abs(), descending=True)][:k].numpy(), rtol=1e-6,
                               atol=1e-9 * float(evh.abs().max()))

    # `lamda analyze` redraws the figure; a resumed run skips both cells
    png.unlink()
    assert main(["analyze", str(out), *DRAFT]) == 0 and png.is_file()
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    # a lost GGN eigenvalue file: the analysis refuses, naming it
    (d / "GGN-eigenvalues-42-0.09000.csv").unlink()
    assert main(["analyze", str(out), *DRAFT]) == 2
    assert "GGN-eigenvalues-42-0.09000.csv" in capsys.readouterr().err


def test_spectrum_ggn_only(data_root, tmp_path):
    out = tmp_path / "spectrum"
    assert main(["run", "spectrum", "--preset", "smoke", *DRAFT, "--data-root", str(data_root), "--out", str(out),
                 "--hidden", "2,2", "--steps", "1", "--curvature", "ggn"]) == 0
    d = out / "test_data"
    assert (d / "GGN-eigenvalues-42-0.00000.csv").is_file() and (d / "GGN-eigenvectors-42-0.00000.csv").is_file()
    assert not list(d.glob("Hessian-*")) and not (out / "hessian_vs_ggn_spectra.png").exists()
    vals = _eigenvalue_csv(d / "GGN-eigenvalues-42-0.00000.csv")
    assert (vals >= -1e-12 * vals.max()).all()                                 # positive semi-definite
    rows = result_files.read_csv(d / "Model-42.csv")
    assert rows[0]["Lambda_Max"] == pytest.approx(vals.max(), rel=1e-12)
    z = result_files.read_npz(out / "spectrum.npz")
    assert list(z["curvatures"]) == ["ggn"] and "eigenvalues" not in z and z["ggn_eigenvalues"].shape[-1] == len(vals)
    text = (out / "summary.md").read_text()
    assert "vs GGN spectrum" in text and "largest converged GGN eigenvalue" in text and "Hessian vs GGN" not in text
