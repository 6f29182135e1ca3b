"""Atomic writes and safe checkpoint loading (lamda.result_files)."""
import os

import numpy as np
import pytest
import torch

from lamda import result_files


def test_csv_roundtrip_with_missing_and_nonfinite(tmp_path):
    rows = [{"epoch": 0, "acc": 0.5, "lam": float("nan")}, {"epoch": 1, "acc": 0.75, "lam": -3.25, "extra": "x"}]
    p = tmp_path / "m.csv"
    result_files.write_csv(p, rows)
    back = result_files.read_csv(p)
    assert back == [{"epoch": 0, "acc": 0.5, "lam": None, "extra": None},
                    {"epoch": 1, "acc": 0.75, "lam": -3.25, "extra": "x"}]
    assert p.read_text().splitlines()[0] == "epoch,acc,lam,extra"


def test_json_converts_numpy_and_nan(tmp_path):
    p = tmp_path / "c.json"
    result_files.write_json(p, {"a": np.float32(1.5), "b": np.int64(3), "c": [float("inf"), 2.0], "t": torch.tensor([1, 2])})
    assert result_files.read_json(p) == {"a": 1.5, "b": 3, "c": [None, 2.0], "t": [1, 2]}


def test_npz_roundtrip(tmp_path):
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    result_files.write_npz(tmp_path / "x.npz", a=a, t=torch.ones(3, dtype=torch.int64))
    back = result_files.read_npz(tmp_path / "x.npz")
    np.testing.assert_array_equal(back["a"], a)
    np.testing.assert_array_equal(back["t"], np.ones(3, dtype=np.int64))


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "keep.txt"
    result_files.write_text(p, "old")
    with pytest.raises(RuntimeError):
        with result_files.atomic_path(p) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_remove_stale_temp_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in (".a.csv.x1.csv.tmp", "sub/.b.pt.x2.pt.tmp", "keep.csv", "visible.tmp"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in result_files.remove_stale_temp_files(tmp_path)] == [".a.csv.x1.csv.tmp"]
    assert (tmp_path / "sub" / ".b.pt.x2.pt.tmp").exists()
    result_files.remove_stale_temp_files(tmp_path, recursive=True)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.csv", "visible.tmp"]


def test_checkpoint_roundtrip(tmp_path):
    m = torch.nn.Linear(3, 2)
    result_files.save_checkpoint(tmp_path / "c.pt", {"model": m.state_dict(), "epoch": 4, "rows": "[]"})
    ck = result_files.load_checkpoint(tmp_path / "c.pt")
    assert ck["epoch"] == 4 and ck["format"] == result_files.CHECKPOINT_FORMAT
    torch.testing.assert_close(ck["model"]["weight"], m.weight.detach())


def test_checkpoint_missing_corrupt_foreign(tmp_path):
    with pytest.raises(result_files.CheckpointError, match="does not exist"):
        result_files.load_checkpoint(tmp_path / "none.pt")
    good = tmp_path / "good.pt"
    result_files.save_checkpoint(good, {"w": torch.randn(100, 100)})
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(result_files.CheckpointError, match="corrupt"):
        result_files.load_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(result_files.CheckpointError):
        result_files.load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(result_files.CheckpointError, match="not a lamda checkpoint"):
        result_files.load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": result_files.CHECKPOINT_FORMAT, "obj": _Custom()}, pickled)   # needs unpickling code: refused
    with pytest.raises(result_files.CheckpointError, match="weights-only"):
        result_files.load_checkpoint(pickled)
    assert isinstance(result_files.CheckpointError("x"), ValueError)


class _Custom:
    pass
