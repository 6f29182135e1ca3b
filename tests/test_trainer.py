"""Trainer: metrics, λ measurements, checkpoints, resume, reproducibility (lamda.trainer)."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lamda_ext
from lamda_ext.checks import MAX_ORDERS
from lamda import result_files
from lamda.data import load_dataset
from lamda.measure import LambdaMeter, MeasureConfig, fit_lambda, log_abs_mean, regenerate_directions
from lamda.models import SigmoidMLP
from lamda.regularizers import InputGradientPenalty, RegularizerSet, SAM
from lamda.schedule import MeasurementSchedule
from lamda.trainer import Trainer, TrainConfig, evaluate, resolve_device, run_is_complete, train_run

pytestmark = pytest.mark.xdist_group("trainer")      # its module fixture is computed once, on one worker


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=240, test_size=80, seed=0)


def _builder(data, epochs=3, regs=(), schedule="none", points=6):
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=7, schedule=schedule, progress=False)
    mcfg = MeasureConfig(points=points, directions=4, order=4, seed=99, chunk_size=4)

    def build():
        torch.manual_seed(7)
        model = SigmoidMLP(hidden=(32,), dropout=0.2)
        meter = LambdaMeter(data.x_test[:points], data.y_test[:points], mcfg)
        return Trainer(model, data, RegularizerSet(list(regs)), cfg, meter, MeasurementSchedule())
    return build


def _rows_wo_time(path):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in result_files.read_csv(path)]


def test_schedule():
    s = MeasurementSchedule()
    assert s.epochs(100) == [*range(11), *range(12, 31, 2), 35, 40, 45, 50, 60, 70, 80, 90, 100]
    assert s.epochs(13) == [*range(11), 12, 13]
    assert MeasurementSchedule(include_last=False).epochs(13) == [*range(11), 12]
    with pytest.raises(ValueError):
        MeasurementSchedule(stages=((10, 1), (5, 2)))


def test_evaluate_matches_manual():
    torch.manual_seed(0)
    m = SigmoidMLP(in_features=4, hidden=(5,), num_classes=3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    loss, acc, p = evaluate(m, x, y, batch_size=3)
    out = m(x)
    assert loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-6)
    assert acc == pytest.approx((out.argmax(1) == y).float().mean().item())
    torch.testing.assert_close(p, out.softmax(1))


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_run_learns_writes_files_and_is_reproducible(digits, tmp_path):
    train_run(_builder(digits), tmp_path / "a")
    d = tmp_path / "a"
    assert run_is_complete(d) and not (d / "checkpoint.pt").exists()
    rows = result_files.read_csv(d / "training_metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["test_acc"] > 0.5 > rows[0]["test_acc"]
    for r in rows:
        assert r["gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert 0.0 <= r["ece"] <= 1.0
    lam = result_files.read_npz(d / "lambda_data.npz")
    assert lam["derivatives_per_point"].shape == (4, 6, 4, 4)
    assert lam["lambda_values"].shape == (4, 4) and list(lam["epochs"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(lam["test_acc"], [r["test_acc"] for r in rows])
    # a second run from scratch gives the same numbers
    train_run(_builder(digits), tmp_path / "b")
    assert _rows_wo_time(d / "training_metrics.csv") == _rows_wo_time(tmp_path / "b" / "training_metrics.csv")
    lb = result_files.read_npz(tmp_path / "b" / "lambda_data.npz")
    for k in lam:
        np.testing.assert_array_equal(lam[k], lb[k])
    # a finished run is skipped
    mtime = (d / "final_model.pt").stat().st_mtime_ns
    again = train_run(_builder(digits), d)
    assert again.skipped and (d / "final_model.pt").stat().st_mtime_ns == mtime


def test_lambda_data_consistent_and_regenerable(digits, tmp_path):
    train_run(_builder(digits, epochs=1), tmp_path)
    lam = result_files.read_npz(tmp_path / "lambda_data.npz")
    dpp = lam["derivatives_per_point"]
    np.testing.assert_allclose(lam["derivatives"], dpp.mean(1))
    np.testing.assert_allclose(lam["log_abs_derivatives"], np.stack([log_abs_mean(d, 0) for d in dpp]))
    # λ from lamda_ext.curvature_rate(pool="points") equals the numpy least-squares fit of the stored log|d_n|
    np.testing.assert_allclose(lam["lambda_values"], fit_lambda(lam["log_abs_derivatives"]), rtol=1e-6, atol=1e-8)
    # regenerate the directions from the stored seeds and recompute the last measurement with the autograd reference
    ck = result_files.load_checkpoint(tmp_path / "final_model.pt")
    model = SigmoidMLP(hidden=(32,), dropout=0.2)
    model.load_state_dict(ck["model"])
    model.eval()
    x, y = digits.x_test[:6], digits.y_test[:6]
    u = regenerate_directions(x, 4, lam["direction_seeds"], int(lam["direction_chunk_size"]))   # [P, K, ...]
    ref = lamda_ext.directional_derivs(model, x, y, order=4, directions=u.transpose(0, 1).contiguous(),
                                       backend="autograd")
    np.testing.assert_allclose(dpp[-1], ref.detach().double().numpy(), rtol=2e-3, atol=1e-6)


def test_log_abs_mean_masks_exact_zeros():
    d = np.array([[1.0, 0.0], [np.e, 0.0]])
    out = log_abs_mean(d, axis=0)
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1])
    assert fit_lambda(np.array([0.0, -1.0, -2.0, -3.0])) == pytest.approx(-1.0)
    assert fit_lambda(np.array([0.0, np.nan, -2.0, -3.5]), (2, 4)) == pytest.approx(-1.5)
    assert np.isnan(fit_lambda(np.array([np.nan, np.nan, 1.0])))


class _Boom(Exception):
    pass


@pytest.mark.parametrize("kind", ["igp", "sam_cosine"])
def test_interrupted_run_resumes_bit_identically(digits, tmp_path, monkeypatch, kind):
    def build():
        if kind == "igp":
            return _builder(digits, regs=[InputGradientPenalty(0.01)])
        return _builder(digits, regs=[SAM(0.05)], schedule="cosine")
    train_run(build(), tmp_path / "ref")
    orig = Trainer.train_epoch
    calls = {"n": 0}

    def flaky(self, desc=""):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Boom()
        return orig(self, desc)

    monkeypatch.setattr(Trainer, "train_epoch", flaky)
    with pytest.raises(_Boom):
        train_run(build(), tmp_path / "cut")
    monkeypatch.setattr(Trainer, "train_epoch", orig)
    cut = tmp_path / "cut"
    assert result_files.load_checkpoint(cut / "checkpoint.pt")["epoch"] == 2 and not run_is_complete(cut)
    train_run(build(), cut)
    assert _rows_wo_time(cut / "training_metrics.csv") == _rows_wo_time(tmp_path / "ref" / "training_metrics.csv")
    a, b = result_files.load_checkpoint(cut / "final_model.pt"), result_files.load_checkpoint(tmp_path / "ref" / "final_model.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    rows = result_files.read_csv(cut / "training_metrics.csv")
    if kind == "igp":
        assert all(0 < r["penalty_share_input_gradient_penalty"] < 1 for r in rows[1:])


def test_corrupt_checkpoint_restarts_from_scratch(digits, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "checkpoint.pt").write_bytes(b"\x00garbage")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        train_run(_builder(digits, epochs=1), d)
    assert any("restarting the run from scratch" in str(x.message) for x in w)
    assert run_is_complete(d) and not (d / "checkpoint.pt").exists()


def test_cosine_schedule_and_sam(digits, tmp_path):
    train_run(_builder(digits, epochs=2, regs=[SAM(0.05)], schedule="cosine"), tmp_path)
    rows = result_files.read_csv(tmp_path / "training_metrics.csv")
    for r in rows:
        assert r["lr"] == pytest.approx(3e-3 * (1 + math.cos(math.pi * r["epoch"] / 2)) / 2, abs=1e-12)
    assert rows[-1]["train_acc"] > rows[0]["train_acc"]


def test_early_stopping_step_callback_and_optimizer_factory(digits, tmp_path):
    steps = []
    cfg = TrainConfig(epochs=30, batch_size=60, lr=1e-3, seed=1, progress=False, early_stop_patience=2,
                      early_stop_metric="test_acc")   # test accuracy 'lower is better': stops after 2 epochs of growth

    def build():
        torch.manual_seed(1)
        return Trainer(SigmoidMLP(hidden=(16,)), digits, RegularizerSet([]), cfg, None,
                       optimizer_factory=lambda m: torch.optim.SGD(m.parameters(), lr=0.05),
                       step_callback=steps.append)
    res = train_run(build, tmp_path)
    acc = [r["test_acc"] for r in res.rows]
    assert len(acc) < 31
    best = int(np.argmin(acc))
    assert res.rows[-1]["epoch"] - res.rows[best]["epoch"] == 2
    assert len(steps) == 4 * res.rows[-1]["epoch"] and steps[0]["epoch"] == 1 and steps[-1]["step"] == 3
    assert isinstance(build().opt, torch.optim.SGD)
    with pytest.raises(ValueError, match="not both"):
        Trainer(SigmoidMLP(hidden=(4,)), digits, RegularizerSet([SAM(0.1)]), cfg,
                optimizer_factory=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))


def test_bad_config():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    assert MeasureConfig(order=MAX_ORDERS["auto"]).order == MAX_ORDERS["auto"]        # the core's limit
    for order, backend in ((0, "auto"), (MAX_ORDERS["auto"] + 1, "auto"), (MAX_ORDERS["func"] + 1, "func")):
        with pytest.raises(ValueError, match="order must be in 1.."):
            MeasureConfig(order=order, backend=backend)
