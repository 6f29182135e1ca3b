"""The shared grid runner (lamda.studies.runner): markers, resume, damaged cells, shards, the folder lock."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lamda import result_files
from lamda.studies import runner
from lamda.studies.runner import (Cell, FolderLockedError, cell_is_complete, folder_lock, recorded_cells,
                                      require_complete, run_grid)


def _grid(n=4):
    return [Cell(f"g/c{i}", {"i": i}, (f"files/c{i}.txt",)) for i in range(n)]


class Recorder:
    """A work function that writes one file per cell and counts calls; an analyze that counts calls."""

    def __init__(self, out):
        self.out, self.calls, self.analyses = out, [], 0

    def work(self, cell):
        self.calls.append(cell.key)
        result_files.write_text(self.out / "files" / f"c{cell.params['i']}.txt", f"cell {cell.params['i']}\n" * 3)

    def analyze(self, out):
        self.analyses += 1
        assert all(cell_is_complete(out, c) for c in _grid())
        result_files.write_text(out / "summary.md", "ok\n")
        return 0


def test_cell_validation():
    for bad in ("", "/a", "a//b", "a/../b", ".hidden", "a b", "a/-x"):
        with pytest.raises(ValueError, match="Cell.key"):
            Cell(bad)
    with pytest.raises(TypeError, match="params must be a dict"):
        Cell("a", [1, 2])
    with pytest.raises(TypeError, match="JSON-able"):
        Cell("a", {"f": object()})
    for bad in ("/abs", "../up", ""):
        with pytest.raises(ValueError, match="inside the results folder"):
            Cell("a", {}, (bad,))
    assert Cell("a", {}, "one/file").outputs == ("one/file",)
    assert Cell("mnist/wd_1e-4/seed_42").params == {}


def test_runs_each_cell_once_then_skips(tmp_path, capsys):
    rec = Recorder(tmp_path)
    assert run_grid("t", tmp_path, _grid(), rec.work, rec.analyze) == 0
    assert rec.calls == [c.key for c in _grid()] and rec.analyses == 1
    log = capsys.readouterr().out
    assert all(f"[t] rank 0/1: g/c{i} done in" in log for i in range(4))
    marker = result_files.read_json(tmp_path / ".cells" / "g" / "c2.done.json")
    assert marker["params"] == {"i": 2} and marker["outputs"] == {"files/c2.txt": len("cell 2\n") * 3}
    assert not (tmp_path / runner.LOCK_NAME).exists()             # released
    assert [c.key for c in recorded_cells(tmp_path)] == [c.key for c in _grid()]
    assert run_grid("t", tmp_path, _grid(), rec.work, rec.analyze) == 0
    assert len(rec.calls) == 4 and rec.analyses == 2
    assert "g/c0 finished earlier, skipped" in capsys.readouterr().out


def test_shards_fill_the_grid_and_the_last_analyzes(tmp_path, capsys):
    rec = Recorder(tmp_path)
    assert run_grid("t", tmp_path, _grid(), rec.work, rec.analyze, shard="1/2") == 0
    assert rec.calls == ["g/c1", "g/c3"] and rec.analyses == 0
    assert "2 cell(s) of other shards are not finished" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"2 of 4 cell\(s\) are not complete: g/c0 \(not finished\); g/c2"):
        require_complete(tmp_path, _grid())
    assert run_grid("t", tmp_path, _grid(), rec.work, rec.analyze, shard="0/2") == 0
    assert rec.calls == ["g/c1", "g/c3", "g/c0", "g/c2"] and rec.analyses == 1
    require_complete(tmp_path, _grid())
    with pytest.raises(ValueError, match="--shard"):
        run_grid("t", tmp_path, _grid(), rec.work, rec.analyze, shard="2/2")


def test_damaged_finished_cells_are_redone_from_scratch(tmp_path, capsys):
    rec = Recorder(tmp_path)
    run_grid("t", tmp_path, _grid(), rec.work, rec.analyze)
    (tmp_path / "files" / "c1.txt").unlink()                                   # deleted output
    with open(tmp_path / "files" / "c2.txt", "r+") as fh:                      # truncated output
        fh.truncate(5)
    result_files.write_text(tmp_path / ".cells" / "g" / "c3.done.json", "{garbage")     # damaged marker
    assert not cell_is_complete(tmp_path, _grid()[1])
    with pytest.raises(ValueError) as ei:
        require_complete(tmp_path, _grid())
    msg = str(ei.value)
    assert "files/c1.txt is missing" in msg and "files/c2.txt changed size" in msg and "damaged" in msg
    rec.calls.clear()
    run_grid("t", tmp_path, _grid(), rec.work, rec.analyze)
    assert rec.calls == ["g/c1", "g/c2", "g/c3"]
    assert "g/c1 redone from scratch: its file files/c1.txt is missing" in capsys.readouterr().out
    require_complete(tmp_path, _grid())
    # other settings for the same key: not complete
    other = [Cell("g/c0", {"i": 0, "lr": 0.1}, ("files/c0.txt",))]
    assert not cell_is_complete(tmp_path, other[0])
    with pytest.raises(ValueError, match="records other settings"):
        require_complete(tmp_path, other)


def test_failed_work_leaves_no_marker_and_releases_the_lock(tmp_path):
    def work(cell):
        if cell.key == "g/c1":
            raise FloatingPointError("diverged")
        Recorder(tmp_path).work(cell)
    with pytest.raises(FloatingPointError):
        run_grid("t", tmp_path, _grid(), work, None)
    assert cell_is_complete(tmp_path, _grid()[0]) and not cell_is_complete(tmp_path, _grid()[1])
    assert not (tmp_path / runner.LOCK_NAME).exists()


def test_missing_declared_output_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="without writing the output 'files/c0.txt'"):
        run_grid("t", tmp_path, _grid(1), lambda c: None, None)
    assert not cell_is_complete(tmp_path, _grid(1)[0])


def test_duplicate_keys_refused(tmp_path):
    with pytest.raises(ValueError, match="repeated: a"):
        run_grid("t", tmp_path, [Cell("a"), Cell("a")], lambda c: None, None)


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result_files.write_json(tmp_path / runner.LOCK_NAME, {"pid": sleeper.pid, "host": runner.socket.gethostname(),
                                                     "job": None, "since": "then"})
        with pytest.raises(FolderLockedError, match=rf"in use by another lamda process \(pid {sleeper.pid}"):
            run_grid("t", tmp_path, _grid(1), Recorder(tmp_path).work, None)
        assert not (tmp_path / "files").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the owner is gone: its lock is stale and taken over
    rec = Recorder(tmp_path)
    assert run_grid("t", tmp_path, _grid(1), rec.work, None) == 0 and rec.calls == ["g/c0"]
    assert not (tmp_path / runner.LOCK_NAME).exists()
    # a lock from another host cannot be checked: refused, naming the file to delete
    result_files.write_json(tmp_path / runner.LOCK_NAME, {"pid": 1, "host": "elsewhere", "job": None, "since": "then"})
    with pytest.raises(FolderLockedError, match="on host elsewhere.*delete"):
        with folder_lock(tmp_path):
            pass


def test_lock_is_reentrant_and_shared_by_one_job(tmp_path, monkeypatch):
    with folder_lock(tmp_path):
        rec = result_files.read_json(tmp_path / runner.LOCK_NAME)
        assert rec["pid"] == os.getpid()
        with folder_lock(tmp_path):                 # the CLI holds it, run_grid takes it again
            pass
        assert (tmp_path / runner.LOCK_NAME).exists()
    assert not (tmp_path / runner.LOCK_NAME).exists()
    # a rank of the same torchrun job (same job id) shares a lock held by a live process
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result_files.write_json(tmp_path / runner.LOCK_NAME, {"pid": sleeper.pid, "host": runner.socket.gethostname(),
                                                     "job": "job-1", "since": "then"})
        monkeypatch.setattr(runner.distributed, "job_id", lambda: "job-1")
        with folder_lock(tmp_path):
            pass
        assert json.loads((tmp_path / runner.LOCK_NAME).read_text())["pid"] == sleeper.pid   # not removed
        monkeypatch.setattr(runner.distributed, "job_id", lambda: "job-2")
        with pytest.raises(FolderLockedError):
            with folder_lock(tmp_path):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_each_phase_is_logged_with_its_own_time(tmp_path, capsys, monkeypatch):
    """The cells and the analysis are timed apart: a clock that only the work (10 s per cell) and the analysis
    (1 s) move gives a cell phase of 40 s and an analysis of 1 s, not 41 s."""
    now = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: now[0])
    rec = Recorder(tmp_path)

    def work(cell):
        now[0] += 10.0
        rec.work(cell)

    def analyze(out):
        now[0] += 1.0
        return rec.analyze(out)

    assert run_grid("t", tmp_path, _grid(), work, analyze) == 0
    log = capsys.readouterr().out
    assert "[t] rank 0/1: the cell phase took 40.0 s (4 cell(s) computed)" in log
    assert "[t] rank 0 wrote the analysis in 1.0 s" in log
    assert run_grid("t", tmp_path, _grid(), work, analyze) == 0          # resumed: no cell computed again
    log = capsys.readouterr().out
    assert "the cell phase took 0.0 s (0 cell(s) computed)" in log and "wrote the analysis in 1.0 s" in log
