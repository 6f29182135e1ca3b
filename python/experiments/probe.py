"""``lamda run probe``: the curvature-probe ("bore hole") optimizer vs SGD, Adam and SAM (issue 6, experiment 4).

The MNIST CNN is trained for 10 epochs (full) with

- ``sgd``    SGD with momentum 0.9;
- ``adam``   Adam (lr 1e-3);
- ``sam``    SAM (ρ = 0.05) around the same SGD;
- ``probe``  the same SGD wrapped in :class:`lamda.landscape.CurvatureAdaptiveLR`: every ``k`` batches a
             :class:`lamda.landscape.CurvatureProbe` takes N random unit parameter directions and the
             finite-difference gradient change ``‖g(θ + εu) − g(θ)‖ / ε``; the learning rate becomes
             ``base · clip((c_ref / c)^0.5, 0.1, max_scale)`` (``c_ref`` = the first probe).

The same probe (its own generator; the training RNG streams are untouched) also runs passively every ``k``
batches for the other optimizers, so the curvature is logged for all four. Per step: loss, batch accuracy,
curvature (latest probe), learning rate; per epoch: train/test loss and accuracy and the mean curvature.

Output tree under ``--out``::

    config.json experiment_config.json summary.md
    results.csv         optimizer, seed, final_test_acc, final_test_loss, mean_curvature, final_curvature, ...
    summary_table.csv   mean ± std per optimizer
    probe_data.npz      per run: probe steps, curvatures, test accuracy per epoch
    curvature_over_training.png accuracy_over_training.png
    runs/<optimizer>/seed_<s>/ steps.csv epochs.csv config.json final_model.pt (written last)
"""
from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import io as lio
from .. import plots
from ..data import batches
from ..landscape import CurvatureAdaptiveLR, CurvatureProbe
from ..models import build_model
from ..sam import SAM
from ..trainer import evaluate, resolve_device
from . import Experiment, register
from .experiment_support import (add_mnist_like_argument, fmt, group_mean_std, load_mnist_like, markdown_table,
                                 open_results_folder, parse_seeds, pm, run_seeded_grid)

__all__ = ["PRESETS", "OPTIMIZERS", "STEP_COLUMNS", "EPOCH_COLUMNS", "train_one", "run", "analyze"]

NAME = "probe"
OPTIMIZERS = ("sgd", "adam", "sam", "probe")
STEP_COLUMNS = ["step", "epoch", "loss", "accuracy", "curvature", "directional_curvature", "probed", "lr"]
EPOCH_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "mean_curvature", "lr", "epoch_time_s"]

PRESETS = {
    "full": dict(train=None, test=None, epochs=10, batch=128, seeds=3, probe_every=10, probe_dirs=4, eps=1e-3,
                 sgd_lr=0.02, adam_lr=1e-3, rho=0.05),
    "quick": dict(train=2000, test=1000, epochs=4, batch=128, seeds=1, probe_every=4, probe_dirs=4, eps=1e-3,
                  sgd_lr=0.02, adam_lr=1e-3, rho=0.05),
    "smoke": dict(train=256, test=256, epochs=1, batch=64, seeds=1, probe_every=2, probe_dirs=2, eps=1e-3,
                  sgd_lr=0.02, adam_lr=1e-3, rho=0.05),
}


def _make_optimizer(name: str, model, s: dict, probe: CurvatureProbe, args):
    params = list(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(params, lr=s["sgd_lr"], momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=s["adam_lr"])
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=s["rho"], lr=s["sgd_lr"], momentum=0.9, model=model)
    if name == "probe":
        base = torch.optim.SGD(params, lr=s["sgd_lr"], momentum=0.9)
        return CurvatureAdaptiveLR(base, probe, every=s["probe_every"], max_scale=args.max_scale)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def train_one(name: str, seed: int, data, s: dict, args, run_dir: pathlib.Path) -> None:
    """Train one (optimizer, seed) run and write its folder (``final_model.pt`` last)."""
    dev = resolve_device(args.device)
    torch.manual_seed(seed)
    model = build_model("mnist_cnn", num_classes=data.num_classes).to(dev)
    probe = CurvatureProbe(model, n_directions=s["probe_dirs"], eps=s["eps"],
                           generator=torch.Generator().manual_seed(seed * 7 + 5))
    opt = _make_optimizer(name, model, s, probe, args)
    shuffle = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    steps, epochs = [], []
    curv, direc, step = float("nan"), float("nan"), 0
    t_start = time.perf_counter()
    lr_of = lambda: (opt.optimizer if name == "probe" else getattr(opt, "base_optimizer", opt)).param_groups[0]["lr"]
    for epoch in range(1, s["epochs"] + 1):
        t0 = time.perf_counter()
        model.train()
        probes_this_epoch = []
        for idx in batches(n, s["batch"], shuffle):
            idx = idx.to(dev)
            x, y = data.x_train[idx], data.y_train[idx]
            probed = step % s["probe_every"] == 0
            if probed and name != "probe":
                est = probe(x, y)
                curv, direc = est.curvature, est.directional
            out = model(x)
            loss = F.cross_entropy(out, y)
            if name == "sam":
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.first_step(zero_grad=True)
                F.cross_entropy(model(x), y).backward()
                opt.second_step(zero_grad=True)
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if name == "probe":
                    opt.step(batch=(x, y))
                    curv, direc = opt.curvature, opt.directional
                else:
                    opt.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"{name} seed {seed}: loss became {lv} at step {step}; lower the lr")
            if probed:
                probes_this_epoch.append(curv)
            steps.append({"step": step, "epoch": epoch, "loss": lv,
                          "accuracy": float((out.argmax(1) == y).double().mean()), "curvature": curv,
                          "directional_curvature": direc, "probed": int(probed), "lr": lr_of()})
            step += 1
        tr_loss, tr_acc, _ = evaluate(model, data.x_train, data.y_train)
        te_loss, te_acc, _ = evaluate(model, data.x_test, data.y_test)
        epochs.append({"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss,
                       "test_acc": te_acc, "mean_curvature": float(np.mean(probes_this_epoch)) if probes_this_epoch
                       else float("nan"), "lr": lr_of(), "epoch_time_s": time.perf_counter() - t0})
    lio.write_csv(run_dir / "steps.csv", steps, STEP_COLUMNS)
    lio.write_csv(run_dir / "epochs.csv", epochs, EPOCH_COLUMNS)
    lio.write_json(run_dir / "config.json", {"experiment": NAME, "optimizer": name, "seed": seed, "settings": s,
                                             "max_scale": args.max_scale, "model": "mnist_cnn",
                                             "train_time_s": time.perf_counter() - t_start})
    lio.save_checkpoint(run_dir / "final_model.pt", {"model": model.state_dict(), "complete": True})


def run(args) -> int:
    out = pathlib.Path(args.out)
    s = dict(PRESETS[args.preset])
    for key in ("epochs", "probe_every", "probe_dirs", "eps"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if s["epochs"] < 1 or s["probe_every"] < 1 or s["probe_dirs"] < 1 or not s["eps"] > 0:
        raise ValueError(f"--epochs, --probe-every, --probe-dirs must be >= 1 and --eps > 0, got {s}")
    if not args.max_scale > 0:
        raise ValueError(f"--max-scale must be > 0, got {args.max_scale}")
    seeds = parse_seeds(args.seeds, args.seed, s["seeds"])
    opts = list(OPTIMIZERS) if not args.optimizers else [o.strip() for o in args.optimizers.split(",")]
    bad = sorted(set(opts) - set(OPTIMIZERS))
    if bad:
        raise ValueError(f"--optimizers: unknown {bad}; choose from {', '.join(OPTIMIZERS)}")
    data, dname, note = load_mnist_like(args.dataset, args.data_root, train_size=s["train"], test_size=s["test"],
                                        seed=args.seed, download=args.download)
    data = data.to(resolve_device(args.device))
    config = {"experiment": NAME, "preset": args.preset, "seed": args.seed, "seeds": seeds, "optimizers": opts,
              "dataset": dname, "dataset_note": note, "data_root": args.data_root, "device": args.device,
              "settings": s, "max_scale": args.max_scale,
              "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0])}
    open_results_folder(out, config, ("experiment", "preset", "seed", "seeds", "optimizers", "dataset", "settings",
                                      "max_scale"))
    cells = [(o, sd) for sd in seeds for o in opts]
    return run_seeded_grid("probe", out, cells, args.shard,
                           lambda o, sd, rd: train_one(o, sd, data, s, args, rd), analyze)


def analyze(out) -> int:
    out = pathlib.Path(out)
    cfg = lio.read_json(out / "experiment_config.json")
    rows, raw = [], {}
    for sd in cfg["seeds"]:
        for o in cfg["optimizers"]:
            rd = out / "runs" / o / f"seed_{sd}"
            st, ep = lio.read_csv(rd / "steps.csv"), lio.read_csv(rd / "epochs.csv")
            rc = lio.read_json(rd / "config.json")
            pr = [r for r in st if r["probed"] and r["curvature"] is not None]
            c = np.array([r["curvature"] for r in pr], float)
            rows.append({"optimizer": o, "seed": sd, "final_test_acc": ep[-1]["test_acc"],
                         "final_test_loss": ep[-1]["test_loss"], "final_train_loss": ep[-1]["train_loss"],
                         "mean_curvature": float(c.mean()) if c.size else float("nan"),
                         "final_curvature": float(c[-1]) if c.size else float("nan"),
                         "final_lr": st[-1]["lr"], "train_time_s": rc["train_time_s"]})
            raw[f"{o}_seed{sd}_probe_steps"] = np.array([r["step"] for r in pr], np.int64)
            raw[f"{o}_seed{sd}_curvature"] = c
            raw[f"{o}_seed{sd}_lr"] = np.array([r["lr"] for r in st], float)
            raw[f"{o}_seed{sd}_test_acc"] = np.array([r["test_acc"] for r in ep], float)
            raw[f"{o}_seed{sd}_loss"] = np.array([r["loss"] for r in st], float)
    lio.write_csv(out / "results.csv", rows)
    cols = ["final_test_acc", "final_test_loss", "mean_curvature", "final_curvature", "train_time_s"]
    table = group_mean_std(rows, "optimizer", cols, order=cfg["optimizers"])
    lio.write_csv(out / "summary_table.csv", table)
    lio.write_npz(out / "probe_data.npz", optimizers=np.array(cfg["optimizers"]), seeds=np.array(cfg["seeds"]), **raw)

    colors = dict(zip(OPTIMIZERS, plots.color_cycle(len(OPTIMIZERS))))
    fig, axes = plots.new_figure(2, 1, (5.0, 3.6))
    for o in cfg["optimizers"]:
        for j, sd in enumerate(cfg["seeds"]):
            lab = o if j == 0 else None
            axes[0, 0].plot(raw[f"{o}_seed{sd}_probe_steps"], raw[f"{o}_seed{sd}_curvature"], "-", lw=1,
                            color=colors[o], label=lab, alpha=0.8)
            axes[0, 1].plot(raw[f"{o}_seed{sd}_lr"], "-", lw=1, color=colors[o], label=lab, alpha=0.8)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("probe curvature mean ‖Δg‖/ε")
    axes[0, 0].set_title("curvature over training", fontsize=9)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_ylabel("learning rate")
    axes[0, 1].set_title("learning rate (probe adapts it)", fontsize=9)
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, out / "curvature_over_training.png")

    fig, axes = plots.new_figure(2, 1, (5.0, 3.6))
    for o in cfg["optimizers"]:
        for j, sd in enumerate(cfg["seeds"]):
            lab = o if j == 0 else None
            loss = raw[f"{o}_seed{sd}_loss"]
            w = max(1, min(20, len(loss) // 10))
            sm = np.convolve(loss, np.ones(w) / w, mode="valid")
            axes[0, 0].plot(np.arange(len(sm)) + w - 1, sm, lw=1, color=colors[o], label=lab)
            acc = raw[f"{o}_seed{sd}_test_acc"]
            axes[0, 1].plot(np.arange(1, len(acc) + 1), acc, "o-", ms=3, lw=1, color=colors[o], label=lab)
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("training loss (moving average)")
    axes[0, 1].set_xlabel("epoch")
    axes[0, 1].set_ylabel("test accuracy")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, out / "accuracy_over_training.png")

    by = {r["optimizer"]: r for r in table}
    lines = []
    best = max(table, key=lambda r: r["final_test_acc_mean"])
    lines.append(f"- Highest final test accuracy: `{best['optimizer']}` "
                 f"({pm(best['final_test_acc_mean'], best['final_test_acc_std'], '.4f')}).")
    for other in ("sgd", "adam", "sam"):
        if "probe" in by and other in by:
            d = by["probe"]["final_test_acc_mean"] - by[other]["final_test_acc_mean"]
            spread = max(by["probe"]["final_test_acc_std"], by[other]["final_test_acc_std"])
            n = min(by["probe"]["n"], by[other]["n"])
            if n < 2:
                verdict = "one seed: no spread to judge the difference against"
            elif abs(d) > 2 * spread:
                verdict = "larger than twice the spread over seeds"
            else:
                verdict = "within twice the spread over seeds: no difference shown (null result)"
            lines.append(f"- probe − {other}: Δ test accuracy = {d:+.4f} ({verdict}).")
    if table:
        order = sorted(table, key=lambda r: r["mean_curvature_mean"] if np.isfinite(r["mean_curvature_mean"]) else np.inf)
        lines.append("- Mean probe curvature, lowest first: " + ", ".join(
            f"`{r['optimizer']}` {fmt(r['mean_curvature_mean'], '.4g')}" for r in order) + ".")
    if "probe" in by:
        lrs = [r["final_lr"] for r in rows if r["optimizer"] == "probe"]
        lines.append(f"- The probe's learning rate ended at {fmt(np.mean(lrs), '.4g')} "
                     f"({fmt(np.mean(lrs) / cfg['settings']['sgd_lr'], '.2f')} × the SGD base rate).")
    s = cfg["settings"]
    data_line = f"{cfg['dataset']} ({cfg['train_size']} train / {cfg['test_size']} test)"
    if cfg.get("dataset_note"):
        data_line += f" — {cfg['dataset_note']}"
    body = [[r["optimizer"], r["n"], pm(r["final_test_acc_mean"], r["final_test_acc_std"], ".4f"),
             pm(r["final_test_loss_mean"], r["final_test_loss_std"], ".4f"),
             pm(r["mean_curvature_mean"], r["mean_curvature_std"], ".4g"), fmt(r["train_time_s_mean"], ".0f")]
            for r in table]
    text = [f"# Curvature-probe optimizer vs SGD, Adam, SAM (`lamda run probe --preset {cfg['preset']}`)", "",
            f"Data: {data_line}; MNIST CNN; {s['epochs']} epoch(s), batch {s['batch']}; seeds {cfg['seeds']}. "
            f"SGD lr {s['sgd_lr']} (momentum 0.9), Adam lr {s['adam_lr']}, SAM ρ {s['rho']} around that SGD; "
            f"probe every {s['probe_every']} batches, N = {s['probe_dirs']} directions, ε = {s['eps']}, "
            f"lr scale clipped to [0.1, {cfg['max_scale']}].", "",
            "## Final test accuracy and average curvature (mean ± std over seeds)", "",
            markdown_table(["optimizer", "seeds", "test acc", "test loss", "mean curvature", "train time (s)"], body),
            "", "## Findings (computed from the table)", "", *lines, "",
            "Files: `results.csv`, `summary_table.csv`, `probe_data.npz`, `curvature_over_training.png`, "
            "`accuracy_over_training.png`, `runs/<optimizer>/seed_<s>/{steps,epochs}.csv`.", ""]
    lio.write_text(out / "summary.md", "\n".join(text))
    return 0


def add_arguments(p) -> None:
    add_mnist_like_argument(p)
    p.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the preset's count from --seed)")
    p.add_argument("--optimizers", default=None, help=f"comma-separated subset of {', '.join(OPTIMIZERS)}")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--probe-every", type=int, default=None, help="probe every k batches")
    p.add_argument("--probe-dirs", type=int, default=None, help="N random directions per probe")
    p.add_argument("--eps", type=float, default=None, help="finite-difference step ε")
    p.add_argument("--max-scale", type=float, default=2.0,
                   help="largest lr multiplier of the probe optimizer in flat regions (default 2.0)")


register(Experiment(name=NAME, help="curvature-probe optimizer vs SGD, Adam and SAM on MNIST",
                    add_arguments=add_arguments, run=run, analyze=analyze))
