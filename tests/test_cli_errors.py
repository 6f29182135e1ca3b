"""Bad flags and damaged results: one line on stderr, exit code 2, no traceback.

Three tables: `lamda run` with bad flags (fail before any work), `lamda analyze` on a finished probe smoke
folder damaged in one way per case, and the file readers of lamda.result_files on damaged files. Plus the resume of a
finished run that lost its lambda_data.npz.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from lamda import result_files
from lamda.cli import main
from lamda.studies import runner
from tests._helpers import DRAFT

pytestmark = pytest.mark.xdist_group("cli_errors")      # its module fixture is computed once, on one worker


def one_line_error(capsys, rc, phrases, prefix):
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err and "pickle" not in err.lower()
    for p in phrases:
        assert p in lines[0], (p, lines[0])
    return lines[0]


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p.pid
    p.kill()
    p.wait()


# ------------------------------------------------------------------------------------ lamda run: bad flags
RUN_CASES = {
    "out_is_a_file": (lambda t: ["--out", str(t / "afile")], ["afile is a file, not a folder"]),
    "out_under_a_file": (lambda t: ["--out", str(t / "afile" / "sub")], ["afile is a file, not a folder"]),
    "out_not_writable": (lambda t: ["--out", "/sys/lamda_results"], ["--out /sys/lamda_results is not writable"]),
    "device_banana": (lambda t: ["--device", "banana"], ["--device must be cpu, cuda, cuda:<index> or auto",
                                                          "'banana'"]),
    "device_bad_index": (lambda t: ["--device", "cuda:x"], ["--device must be"]),
    "seed_overflow": (lambda t: ["--seed", "99999999999999999999"], ["--seed", "must be in [0, 2147483647]"]),
    "seed_negative": (lambda t: ["--seed", "-3"], ["--seed", "must be in [0"]),
    "seed_not_int": (lambda t: ["--seed", "4.5"], ["--seed", "must be an integer"]),
    "seeds_overflow": (lambda t: ["--seeds", "1,4294967296"], ["--seeds must lie in [0, 2147483647]"]),
    "ddp_without_torchrun": (lambda t: ["--ddp"], ["--ddp needs torchrun"]),
    "bad_shard": (lambda t: ["--shard", "3/2"], ["--shard"]),
    "dpi_too_low": (lambda t: ["--dpi", "72"], ["--dpi", "must be in [150, 300]"]),
    "dpi_not_int": (lambda t: ["--dpi", "150.5"], ["--dpi", "must be an integer"]),
}


def test_figures_default_to_the_studies_resolution(tmp_path):
    from lamda.cli import build_parser
    assert build_parser().parse_args(["run", "probe"]).dpi == 300
    assert build_parser().parse_args(["analyze", str(tmp_path)]).dpi == 300


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_refuses_bad_flags_in_one_line(case, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    extra, phrases = RUN_CASES[case]
    argv = ["run", "probe", "--preset", "smoke", "--dataset", "digits", "--out", str(tmp_path / "out"),
            *extra(tmp_path)]
    try:
        rc = main(argv)
    except SystemExit as exc:          # argparse refuses a flag's type before `lamda run` starts
        rc = exc.code
    flag = {"seed": "--seed", "dpi": "--dpi"}.get(case.split("_")[0])
    argparse_refusal = case.startswith(("seed_", "dpi_"))
    prefix = f"lamda run probe: error: argument {flag}" if argparse_refusal else "lamda run probe: error:"
    one_line_error(capsys, rc, phrases, prefix)
    assert not (tmp_path / "out" / "runs").exists()                 # nothing was trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_gpu(tmp_path, capsys):
    rc = main(["run", "probe", "--preset", "smoke", "--device", "cuda", "--out", str(tmp_path / "o")])
    one_line_error(capsys, rc, ["torch sees no CUDA device; use --device cpu"], "lamda run probe: error:")


def test_ddp_refused_for_an_experiment_with_its_own_training_loop(tmp_path, capsys, monkeypatch):
    import lamda.cli
    from lamda.studies import get
    assert get("selective").ddp and get("diagnostic").ddp and not get("spectrum").ddp
    monkeypatch.setattr(lamda.cli.distributed, "init_from_env", lambda device: True)     # as under torchrun
    rc = main(["run", "probe", "--preset", "smoke", "--ddp", "--out", str(tmp_path / "o")])
    one_line_error(capsys, rc, ["--ddp: probe trains with its own loop", "without --ddp"], "lamda run probe: error:")


def test_second_run_on_a_busy_folder_is_refused(tmp_path, capsys, sleeper):
    out = tmp_path / "out"
    out.mkdir()
    result_files.write_json(out / runner.LOCK_NAME, {"pid": sleeper, "host": runner.socket.gethostname(), "job": None,
                                            "since": "now"})
    rc = main(["run", "probe", "--preset", "smoke", *DRAFT, "--dataset", "digits", "--out", str(out)])
    one_line_error(capsys, rc, [f"in use by another lamda process (pid {sleeper}", "choose another --out"],
                   "lamda run probe: error:")
    assert not (out / "experiment_config.json").exists()
    rc = main(["analyze", str(out), *DRAFT])          # analyze is refused too (before it looks at anything else)
    assert rc == 2


# ------------------------------------------------------------------------------------ lamda analyze: damage
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished `lamda run probe --preset smoke` folder (two optimizers, the offline digits set)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("finished") / "probe"
    assert main(["run", "probe", "--preset", "smoke", *DRAFT, "--dataset", "digits", "--optimizers", "sgd,adam",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def _edit_json(path, fn):
    obj = json.loads(path.read_text())
    path.write_text(json.dumps(fn(obj)))


def _truncate(path, keep=None):
    data = path.read_bytes()
    path.write_bytes(data[:keep if keep is not None else len(data) // 2])


ANALYZE_CASES = {
    "no_completion_marker": (lambda o: (o / ".cells" / "adam" / "seed_42.done.json").unlink(),
                             ["1 of 2 cell(s) are not complete: adam/seed_42 (not finished)",
                              "repeating the `lamda run` command with --out"]),
    "torn_csv_in_a_run": (lambda o: _truncate(o / "runs" / "sgd" / "seed_42" / "steps.csv"),
                          ["sgd/seed_42 (its file runs/sgd/seed_42/steps.csv changed size"]),
    "deleted_run_file": (lambda o: (o / "runs" / "adam" / "seed_42" / "epochs.csv").unlink(),
                         ["adam/seed_42 (its file runs/adam/seed_42/epochs.csv is missing)"]),
    "garbage_config": (lambda o: (o / "experiment_config.json").write_text("{not json"),
                       ["experiment_config.json is not valid JSON"]),
    "list_config": (lambda o: (o / "experiment_config.json").write_text("[1, 2]"),
                    ["experiment_config.json holds a JSON list, not an object"]),
    "config_without_experiment": (lambda o: _edit_json(o / "experiment_config.json",
                                                       lambda c: {k: v for k, v in c.items() if k != "experiment"}),
                                  ["experiment_config.json has no 'experiment' entry"]),
    "partial_config": (lambda o: _edit_json(o / "experiment_config.json",
                                            lambda c: {k: v for k, v in c.items() if k != "seeds"}),
                       ["experiment_config.json has no entry 'seeds'"]),
    "damaged_grid_record": (lambda o: (o / ".cells" / "grid.json").write_text('{"cells": 3}'),
                            ["grid.json is damaged"]),
    "not_a_folder": (lambda o: shutil.rmtree(o), ["is not a folder"]),
}


@pytest.mark.parametrize("case", sorted(ANALYZE_CASES))
def test_analyze_refuses_damaged_results_in_one_line(case, finished, tmp_path, capsys):
    out = tmp_path / "probe"
    shutil.copytree(finished, out)
    assert main(["analyze", str(out), *DRAFT]) == 0                        # the intact copy analyses
    capsys.readouterr()
    damage, phrases = ANALYZE_CASES[case]
    damage(out)
    one_line_error(capsys, main(["analyze", str(out), *DRAFT]), phrases, "lamda analyze: error:")


def test_resume_redoes_a_damaged_cell_then_analyze_passes(finished, tmp_path, capsys):
    out = tmp_path / "probe"
    shutil.copytree(finished, out)
    _truncate(out / "runs" / "sgd" / "seed_42" / "steps.csv")
    assert main(["run", "probe", "--preset", "smoke", *DRAFT, "--dataset", "digits", "--optimizers", "sgd,adam",
                 "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "sgd/seed_42 redone from scratch: its file runs/sgd/seed_42/steps.csv changed size" in log
    assert "adam/seed_42 finished earlier, skipped" in log
    assert main(["analyze", str(out), *DRAFT]) == 0
    a, b = result_files.read_csv(out / "runs" / "sgd" / "seed_42" / "steps.csv"), \
        result_files.read_csv(finished / "runs" / "sgd" / "seed_42" / "steps.csv")
    assert a == b                                                   # the redone run gives the same numbers


# ------------------------------------------------------------------------------------ lamda.result_files readers
def _npz_bytes(**arrays):
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


READER_CASES = {
    "csv_torn_row": ("m.csv", b"epoch,loss,acc\n0,1.5,0.1\n1,1.2", result_files.read_csv,
                     ["m.csv line 3: 2 field(s) where the header has 3", "cut or edited"]),
    "csv_extra_field": ("m.csv", b"epoch,loss\n0,1.5,7\n", result_files.read_csv, ["m.csv line 2: 3 field(s)"]),
    "csv_garbage_cell": ("m.csv", b"epoch,loss\n0,1.5\n1,abc\n2,0.9\n",
                         lambda p: result_files.read_csv(p, numeric=["epoch", "loss", "not_a_column"]),
                         ["m.csv line 3: column 'loss' holds 'abc' where numbers are expected"]),
    "metrics_garbage_cell": ("training_metrics.csv", b"epoch,train_loss\n0,1.5\n1,0.9\n2,x7\n",
                             lambda p: result_files.read_csv(p, numeric=__import__("lamda.trainer").trainer.METRIC_COLUMNS),
                             ["training_metrics.csv line 4: column 'train_loss' holds 'x7'"]),
    "csv_empty": ("m.csv", b"", result_files.read_csv, ["m.csv is empty"]),
    "csv_binary": ("m.csv", b"\xff\xfe\x00garbage", result_files.read_csv, ["m.csv is not a readable CSV"]),
    "npz_truncated": ("lambda_data.npz", _npz_bytes(a=np.arange(1000.0))[:300], result_files.read_npz,
                      ["lambda_data.npz is not a readable .npz file", "delete it and rerun"]),
    "npz_garbage": ("lambda_data.npz", b"this is not a zip file at all", result_files.read_npz,
                    ["lambda_data.npz is not a readable .npz file"]),
    "npz_object_array": ("lambda_data.npz", _npz_bytes(a=np.array([{"x": 1}], dtype=object)), result_files.read_npz,
                         ["lambda_data.npz is not a readable .npz file (it holds object arrays"]),
    "json_truncated": ("c.json", b'{"a": [1, 2', result_files.read_json, ["c.json is not valid JSON"]),
}


@pytest.mark.parametrize("case", sorted(READER_CASES))
def test_readers_name_the_damaged_file(case, tmp_path):
    name, content, reader, phrases = READER_CASES[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError) as ei:
        reader(tmp_path / name)
    msg = str(ei.value)
    assert len(msg.splitlines()) == 1 and "pickle" not in msg.lower(), msg
    for p in phrases:
        assert p in msg, (p, msg)


def test_missing_entries_name_the_file(tmp_path):
    result_files.write_npz(tmp_path / "lambda_data.npz", derivatives=np.zeros((2, 3)))
    z = result_files.read_npz(tmp_path / "lambda_data.npz")
    with pytest.raises(ValueError, match=r"lambda_data.npz has no array 'lambda_values' \(it has: derivatives\)"):
        z["lambda_values"]
    with pytest.raises(KeyError):                                   # still a KeyError for `except KeyError` code
        z["lambda_values"]
    assert z.get("lambda_values") is None and np.array_equal(z["derivatives"], np.zeros((2, 3)))
    result_files.write_json(tmp_path / "c.json", {"settings": {"epochs": 3}})
    c = result_files.read_json(tmp_path / "c.json")
    with pytest.raises(ValueError, match=r"c.json has no entry 'k' \(it has: epochs\)"):
        c["settings"]["k"]
    assert c == {"settings": {"epochs": 3}} and json.dumps(c)       # behaves as plain JSON data otherwise
    # a column may mix labels and numbers unless the caller says it is numeric; empty cells are None
    (tmp_path / "ok.csv").write_text("name,strength,loss\nsgd,0.1,1.5\nadam,rotation,\n")
    assert result_files.read_csv(tmp_path / "ok.csv", numeric=["loss"]) == [
        {"name": "sgd", "strength": 0.1, "loss": 1.5}, {"name": "adam", "strength": "rotation", "loss": None}]


def test_finished_run_that_lost_lambda_data_is_trained_again(tmp_path):
    """A deleted lambda_data.npz makes the run incomplete, so the resume trains it (no skip-then-fail loop)."""
    from lamda.data import load_dataset
    from lamda.measure import LambdaMeter, MeasureConfig
    from lamda.models import SigmoidMLP
    from lamda.regularizers import RegularizerSet
    from lamda.trainer import Trainer, TrainConfig, run_is_complete, train_run
    torch.set_num_threads(1)
    data = load_dataset("digits", train_size=64, test_size=32, seed=0)

    def build():
        torch.manual_seed(1)
        meter = LambdaMeter(data.x_test[:4], data.y_test[:4], MeasureConfig(points=4, directions=2, order=3, seed=5))
        return Trainer(SigmoidMLP(hidden=(8,)), data, RegularizerSet(),
                       TrainConfig(epochs=1, batch_size=32, seed=2, progress=False), meter)

    rd = tmp_path / "run"
    first = train_run(build, rd)
    assert run_is_complete(rd) and "lambda_data.npz" in result_files.load_checkpoint(rd / "final_model.pt")["files"]
    (rd / "lambda_data.npz").unlink()
    assert not run_is_complete(rd)
    again = train_run(build, rd)
    assert not again.skipped and run_is_complete(rd)
    np.testing.assert_array_equal(result_files.read_npz(rd / "lambda_data.npz")["lambda_values"],
                                  first.lambda_data["lambda_values"])
