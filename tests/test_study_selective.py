"""`lamda run selective`: the boundary rule on hand-made probability tables, per-point λ against a direct
computation, the selectivity index and its CI, and the smoke run (every file, λ measured, analyze, resume, flags)."""
import numpy as np
import pytest
import torch
from torch import nn

import lamda_ext
from tests._helpers import DRAFT, DRAFT_DPI, check_analyze_and_resume
from lamda import result_files
from lamda.cli import main
from lamda.stats import t_halfwidth
from lamda.studies.selective.analysis import selectivity_rows, selectivity_table
from lamda.studies.selective.boundary import boundary_points, measure_pair_lambda
from lamda.studies.selective.config import CONDITIONS, PAIR_NAMES

RESULT_COLUMNS = ["condition", "seed", "test_acc", "test_loss", "train_acc", "lambda_4v9", "lambda_3v8", "lambda_5v6",
                  "n_boundary_4v9", "n_boundary_3v8", "n_boundary_5v6", "n_candidates_4v9", "n_candidates_3v8",
                  "n_candidates_5v6", "train_time_s", "penalty_share_mean", "penalty_share_final"]
TOP_FILES = ["config.json", "experiment_config.json", "summary.md", "results.csv", "summary_table.csv",
             "selectivity.csv", "selectivity_table.csv", "selective_data.npz", "lambda_per_pair.png",
             "selectivity_index.png", "penalty_share.png"]
RUN_FILES = ["training_metrics.csv", "config.json", "boundary_lambda.npz", "boundary_lambda.json", "final_model.pt"]


def _row(top: dict) -> torch.Tensor:
    """A float64 probability row over 10 classes: the given entries, the rest spread evenly."""
    p = torch.zeros(10, dtype=torch.float64)
    for c, v in top.items():
        p[c] = v
    rest = [c for c in range(10) if c not in top]
    p[rest] = (1.0 - sum(top.values())) / len(rest)
    return p


def test_boundary_rule_hand_made_table():
    rows = [
        (4, {4: 0.5, 9: 0.4}),          # 0: label 4, p_max 0.5                        → study: in; top2: in
        (9, {2: 0.6, 9: 0.3}),          # 1: label 9, top class 2 at 0.6 (any top class) → study: in; top2: out
        (4, {4: 0.9, 9: 0.05}),         # 2: p_max 0.9 outside [0.2, 0.8]               → out for both
        (3, {4: 0.5, 9: 0.45}),         # 3: top-2 = {4, 9} but true label 3            → study: out; top2: in
        (9, {9: 0.2, 0: 0.2}),          # 4: p_max exactly 0.2 (window inclusive)        → study: in
        (4, {4: 0.8, 9: 0.15}),         # 5: p_max exactly 0.8                           → study: in; top2: in
        (4, {4: 0.8 + 1e-9, 9: 0.15}),  # 6: just above 0.8                              → out for both
        (5, {5: 0.5, 6: 0.4}),          # 7: other pair
    ]
    labels = torch.tensor([r[0] for r in rows])
    probs = torch.stack([_row(r[1]) for r in rows])
    sel = boundary_points(probs, labels, (4, 9), min_points=1)
    assert sel.indices.tolist() == [0, 1, 4, 5] and sel.candidates == 4 and sel.ok
    old = boundary_points(probs, labels, (4, 9), rule="top2", min_points=1)
    assert old.indices.tolist() == [3, 0, 5]               # top-2 = the pair, smallest |p_4 − p_9| first
    assert boundary_points(probs, labels, (5, 6), min_points=1).indices.tolist() == [7]
    # fewer than min_points (default 10) → not ok, i.e. the pair's λ is reported missing
    assert not boundary_points(probs, labels, (4, 9)).ok


def test_boundary_rule_random_cap_and_minimum():
    g = torch.Generator().manual_seed(0)
    n_in, n_out = 250, 60
    labels = torch.cat([torch.where(torch.rand(n_in, generator=g) < 0.5, 4, 9), torch.full((n_out,), 4)])
    # eligible rows: p_max in [0.3, 0.7]; the last n_out rows have the pair's label but p_max 0.95
    pm = torch.cat([0.3 + 0.4 * torch.rand(n_in, generator=g, dtype=torch.float64),
                    torch.full((n_out,), 0.95, dtype=torch.float64)])
    probs = torch.stack([_row({int(y): float(v)}) for y, v in zip(labels, pm)])
    perm = torch.randperm(n_in + n_out, generator=g)          # eligible rows scattered through the table
    probs, labels = probs[perm], labels[perm]
    eligible = set(torch.nonzero(perm < n_in).flatten().tolist())
    a = boundary_points(probs, labels, (4, 9), seed=1)
    assert a.candidates == n_in and a.n_points == 200 and a.ok
    assert set(a.indices.tolist()) <= eligible and len(set(a.indices.tolist())) == 200
    assert a.indices.tolist() == sorted(a.indices.tolist())
    assert boundary_points(probs, labels, (4, 9), seed=1).indices.tolist() == a.indices.tolist()   # seeded
    assert boundary_points(probs, labels, (4, 9), seed=2).indices.tolist() != a.indices.tolist()   # random
    assert set(boundary_points(probs, labels, (4, 9), max_points=1000).indices.tolist()) == eligible
    # exactly 10 eligible → ok; 9 → missing
    keep = sorted(eligible)[:10] + sorted(set(range(n_in + n_out)) - eligible)
    assert boundary_points(probs[keep], labels[keep], (4, 9)).ok
    assert not boundary_points(probs[keep[1:]], labels[keep[1:]], (4, 9)).ok


@pytest.mark.parametrize("kw, match", [(dict(rule="margin"), "rule"), (dict(window=(0.8, 0.2)), "window"),
                                       (dict(max_points=0), "max_points"), (dict(pair=(4, 4)), "pair"),
                                       (dict(pair=(4, 10)), "pair")])
def test_boundary_rule_bad_arguments(kw, match):
    probs, labels = torch.full((3, 10), 0.1), torch.tensor([4, 9, 1])
    pair = kw.pop("pair", (4, 9))
    with pytest.raises(ValueError, match=match):
        boundary_points(probs, labels, pair, **kw)


def test_measure_pair_lambda_uses_per_point_directions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x, y = torch.randn(5, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    r = measure_pair_lambda(model, x, y, directions=3, order=4, direction_seed=7, chunk_size=2, backend="taylor")
    # reference: the autograd backend with the same per-point directions (chunk c from seed 7 + c)
    ref = []
    for c, i in enumerate(range(0, 5, 2)):
        u = lamda_ext.random_directions(x[i:i + 2], 3, torch.Generator().manual_seed(7 + c))    # [K, b, 1, 4, 4]
        if u.shape[1] > 1:
            assert not torch.allclose(u[:, 0], u[:, 1])                                   # one per point
        ref.append(lamda_ext.directional_derivs(model, x[i:i + 2], y[i:i + 2], order=4, directions=u,
                                                backend="autograd").detach())
    ref = torch.cat(ref)
    np.testing.assert_allclose(r["derivatives"], ref.numpy(), rtol=1e-8, atol=1e-12)
    # λ_k = least-squares slope over n of the mean over points of ln|d_n|
    n = np.arange(1, 5)
    lam = [np.polyfit(n, np.log(np.abs(ref[:, k].numpy())).mean(0), 1)[0] for k in range(3)]
    np.testing.assert_allclose(r["lambda_values"], lam, rtol=1e-8)


def test_selectivity_index_and_ci_against_hand_values():
    rows = [{"condition": "baseline", "seed": 1, "lambda_4v9": -5.0, "lambda_3v8": -4.0, "lambda_5v6": -3.0},
            {"condition": "selective_49", "seed": 1, "lambda_4v9": -6.0, "lambda_3v8": -4.5, "lambda_5v6": -2.5},
            {"condition": "selective_38", "seed": 1, "lambda_4v9": -5.0, "lambda_3v8": None, "lambda_5v6": -3.0},
            {"condition": "baseline", "seed": 2, "lambda_4v9": -5.0, "lambda_3v8": -4.0, "lambda_5v6": -3.0},
            {"condition": "selective_49", "seed": 2, "lambda_4v9": -5.5, "lambda_3v8": -4.0, "lambda_5v6": -3.0}]
    sel = {(r["condition"], r["target_pair"], r["seed"]): r for r in selectivity_rows(rows)}
    r = sel[("selective_49", "4v9", 1)]
    assert r["delta_target"] == pytest.approx(-1.0)
    assert r["delta_others"] == pytest.approx(0.0)         # (-0.5 + 0.5) / 2
    assert r["selectivity_index"] == pytest.approx(-1.0)
    assert sel[("selective_49", "4v9", 2)]["selectivity_index"] == pytest.approx(-0.5)
    assert np.isnan(sel[("selective_38", "3v8", 1)]["selectivity_index"])   # missing λ → missing index
    st = {(r["condition"], r["target_pair"]): r for r in selectivity_table(selectivity_rows(rows))}
    s49 = st[("selective_49", "4v9")]
    # two seeds: mean −0.75, sd = 0.25·√2, CI half-width = t_{0.975, 1} · sd / √2 = 12.706 · 0.25
    assert s49["selectivity_index_n"] == 2 and s49["selectivity_index_mean"] == pytest.approx(-0.75)
    assert s49["selectivity_index_ci95"] == pytest.approx(12.7062047 * 0.25, rel=1e-6)
    assert st[("selective_38", "3v8")]["selectivity_index_n"] == 0
    assert np.isnan(t_halfwidth(1.0, 1))


def test_selective_smoke_writes_every_file(data_root, tmp_path, capsys):
    out = tmp_path / "selective"
    argv = ["run", "selective", "--preset", "smoke", *DRAFT, "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for f in TOP_FILES:
        assert (out / f).is_file(), f
    cfg = result_files.read_json(out / "experiment_config.json")
    assert cfg["scale"] == 200.0 and cfg["measurement"]["boundary_rule"] == "label"
    assert cfg["measurement"]["direction_protocol"] == "per-point"
    rows = result_files.read_csv(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert [r["condition"] for r in rows] == list(CONDITIONS)
    table = result_files.read_csv(out / "summary_table.csv")
    assert [r["condition"] for r in table] == list(CONDITIONS)
    for col in ("test_acc_mean", "test_acc_ci95", "lambda_4v9_mean", "lambda_4v9_ci95", "n_boundary_5v6_mean",
                "penalty_share_mean_mean"):
        assert col in table[0], col
    sel = result_files.read_csv(out / "selectivity.csv")
    assert list(sel[0]) == ["condition", "seed", "target_pair", "delta_target", "delta_others", "selectivity_index"]
    assert {(r["condition"], r["target_pair"]) for r in sel} == {
        ("selective_49", "4v9"), ("selective_38", "3v8"), ("global", "4v9"), ("global", "3v8")}
    st = result_files.read_csv(out / "selectivity_table.csv")
    assert "selectivity_index_ci95" in st[0] and all(r["selectivity_index_ci95"] is None for r in st)   # n = 1
    z = result_files.read_npz(out / "selective_data.npz")
    assert z["lambda_per_pair"].shape == (4, 1, 3) and z["boundary_counts"].shape == (4, 1, 3)
    measured = 0
    for cond in CONDITIONS:
        rd = out / "runs" / cond / "seed_42"
        for f in RUN_FILES:
            assert (rd / f).is_file(), f"{cond}/{f}"
        hist = result_files.read_csv(rd / "training_metrics.csv")
        assert [h["epoch"] for h in hist] == [0, 1, 2]
        if cond == "baseline":
            assert "penalty_share_lambda_penalty" not in hist[0]
        else:   # the penalty's share of the loss is logged per epoch
            assert 0.0 < hist[1]["penalty_share_lambda_penalty"] < 1.0
        bl = result_files.read_json(rd / "boundary_lambda.json")
        assert set(bl) == set(PAIR_NAMES)
        npz = result_files.read_npz(rd / "boundary_lambda.npz")
        for p, e in bl.items():
            assert e["n_points"] == min(30, e["n_candidates"])
            assert (e["lambda"] is None) == (e["n_points"] < 10)        # fewer than 10 points → missing
            if e["lambda"] is not None:
                measured += 1
                assert np.isfinite(e["lambda"])
                assert npz[f"derivatives_{p}"].shape == (e["n_points"], 4, 4)     # K = 4, orders 1–4
                assert np.all(np.diff(npz[f"indices_{p}"]) > 0)                   # a sorted random sample
    assert measured >= 1                         # smoke reaches the measurement it exists for
    from PIL import Image
    for f in ("lambda_per_pair.png", "selectivity_index.png", "penalty_share.png"):
        with Image.open(out / f) as im:
            assert round(im.info["dpi"][0]) == DRAFT_DPI, f
    text = (out / "summary.md").read_text()
    for phrase in ("Caveat: `smoke` preset", "per-point", "true label in the pair", "95 % CI", "± n/a",
                   "## Selectivity index"):
        assert phrase in text, phrase
    check_analyze_and_resume(main, out, argv, TOP_FILES, capsys, "global/seed_42", "runs/global/seed_42")
    # a different setting in the same folder is refused
    capsys.readouterr()
    assert main(argv + ["--scale", "3"]) == 2
    assert "different run" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--scale", "inf"), ("--scale", "-1"), ("--scale", "nan"),
                                         ("--label-noise", "1.0"), ("--label-noise", "-0.1"), ("--epochs", "0"),
                                         ("--max-boundary", "5"), ("--boundary-rule", "margin")])
def test_selective_flags_refuse_meaningless_values(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "selective", "--preset", "smoke", *DRAFT, "--out", str(tmp_path / "x"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert flag in err[-1] and "error" in err[-1]
    assert not (tmp_path / "x").exists()


def test_full_preset_scale_and_scale_help_says_where_the_share_is_logged(capsys):
    from lamda.studies.selective.config import PRESETS
    assert PRESETS["full"]["scale"] == 200.0 and PRESETS["full"]["max_boundary"] == 200
    with pytest.raises(SystemExit) as exc:
        main(["run", "selective", "-h"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "200 as in the study's final run" in text and "share of the training loss" in text
    assert "logged in training_metrics.csv" in text and "Measured" not in text
