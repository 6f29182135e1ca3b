"""``lamda run probe``: the curvature-probe ("bore hole") optimizer vs SGD, Adam and SAM (issue 6, exp. 4; issue 11).

The MNIST CNN is trained for 10 epochs (full) with

- ``sgd``          SGD with momentum 0.9 at the base lr;
- ``adam``         Adam (lr 1e-3);
- ``sam``          SAM (ρ = 0.05) around the same SGD;
- ``probe``        the same SGD wrapped in :class:`lamda.landscape.CurvatureAdaptiveLR`: every ``k`` batches a
                   :class:`lamda.landscape.CurvatureProbe` takes N random unit parameter directions and the
                   finite-difference gradient change ``c = mean ‖g(θ + εu) − g(θ)‖ / ε``; the learning rate becomes
                   ``base · clip((c_ref / c)^0.5, 0.1, max_scale)`` with a **running reference** ``c_ref`` (an
                   exponential moving average of log c over the earlier probes, decay ``ref_decay``), so the
                   scale moves both ways around 1;
- ``sgd_matched``  the control: SGD (momentum 0.9) at a constant lr equal to the mean lr of the same seed's
                   ``probe`` run — it separates "adapting the lr" from "a different average lr".

The same probe (its own generator; the training RNG streams are untouched) also runs passively every ``k``
batches for the other optimizers, so the curvature is logged for all of them. Per step: loss, batch accuracy,
curvature (latest probe), learning rate, and for ``probe`` the scale and the reference; per epoch: train/test
loss and accuracy and the mean curvature.

Output tree under ``--out``::

    config.json experiment_config.json summary.md
    results.csv         optimizer, seed, final_test_acc, ..., mean_curvature, final_curvature, mean_lr, ...
    summary_table.csv   per optimizer: mean, std, 95 % CI half-width (ci95), n
    probe_data.npz      per run: probe steps, curvatures, lr and scale per step, test accuracy per epoch
    curvature_over_training.png lr_scale.png accuracy_over_training.png
    runs/<optimizer>/seed_<s>/ steps.csv epochs.csv config.json final_model.pt (written last)
"""
from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from ... import result_files as lio
from ... import plots
from ...data import batches
from ...landscape import CurvatureAdaptiveLR, CurvatureProbe
from ...models import build_model
from ...sam import SAM
from ...trainer import evaluate, resolve_device, run_is_complete
from .. import Experiment, register
from ..support import (add_mnist_like_argument, arg_number, finite_mean_ci, fmt, group_mean_ci,
                                 load_mnist_like, markdown_table, open_results_folder, parse_seeds, fmt_ci)
from ..runner import Cell, require_complete, run_grid

__all__ = ["PRESETS", "OPTIMIZERS", "STEP_COLUMNS", "EPOCH_COLUMNS", "matched_lr", "smooth", "paired_difference",
           "grid_cells", "train_one", "run", "analyze"]

NAME = "probe"
OPTIMIZERS = ("sgd", "adam", "sam", "probe", "sgd_matched")
STEP_COLUMNS = ["step", "epoch", "loss", "accuracy", "curvature", "directional_curvature", "probed", "lr", "scale",
                "reference"]
EPOCH_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "mean_curvature", "lr", "epoch_time_s"]
MIN_SCALE = 0.1
SEED_LINES = ("-", "--", ":", "-.")          # one line style per seed in the probe's own panels
DPI = 300
STYLES = {"sgd": ("-", "o"), "adam": ("--", "s"), "sam": ("-.", "^"), "probe": ("-", "D"),
          "sgd_matched": (":", "v")}

# ref_decay: the running reference's memory in probes (~1 / (1 − decay)): full has ~470 probes per run, quick 16,
# smoke 4, so the smaller presets use a shorter memory (0.7: half-life ~2 probes)
PRESETS = {
    "full": dict(train=None, test=None, epochs=10, batch=128, seeds=3, probe_every=10, probe_dirs=4, eps=1e-3,
                 sgd_lr=0.02, adam_lr=1e-3, rho=0.05, ref_decay=0.9),
    "quick": dict(train=2000, test=1000, epochs=4, batch=128, seeds=2, probe_every=4, probe_dirs=4, eps=1e-3,
                  sgd_lr=0.02, adam_lr=1e-3, rho=0.05, ref_decay=0.7),
    "smoke": dict(train=256, test=256, epochs=2, batch=64, seeds=1, probe_every=2, probe_dirs=2, eps=1e-3,
                  sgd_lr=0.02, adam_lr=1e-3, rho=0.05, ref_decay=0.7),
}


def matched_lr(out: pathlib.Path, seed: int) -> float:
    """The mean lr over the steps of ``runs/probe/seed_<seed>`` (finished), for the ``sgd_matched`` control."""
    rd = out / "runs" / "probe" / f"seed_{seed}"
    if not run_is_complete(rd):
        raise ValueError(f"sgd_matched/seed_{seed} trains at the mean lr of probe/seed_{seed}, which is not finished "
                         f"in {out}; resume the run (the cell probe+sgd_matched/seed_{seed} trains both, in order)")
    lrs = np.array([r["lr"] for r in lio.read_csv(rd / "steps.csv")], float)
    return float(lrs.mean())


def _make_optimizer(name: str, model, s: dict, probe: CurvatureProbe, args, lr: float | None):
    params = list(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(params, lr=s["sgd_lr"], momentum=0.9)
    if name == "sgd_matched":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=s["adam_lr"])
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=s["rho"], lr=s["sgd_lr"], momentum=0.9, model=model)
    if name == "probe":
        base = torch.optim.SGD(params, lr=s["sgd_lr"], momentum=0.9)
        return CurvatureAdaptiveLR(base, probe, every=s["probe_every"], min_scale=MIN_SCALE,
                                   max_scale=s["max_scale"], reference_decay=s["ref_decay"])
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def train_one(name: str, seed: int, data, s: dict, args, run_dir: pathlib.Path, lr: float | None = None) -> None:
    """Train one (optimizer, seed) run and write its folder (``final_model.pt`` last). ``lr``: sgd_matched's lr."""
    dev = resolve_device(args.device)
    torch.manual_seed(seed)
    model = build_model("mnist_cnn", num_classes=data.num_classes).to(dev)
    probe = CurvatureProbe(model, n_directions=s["probe_dirs"], eps=s["eps"],
                           generator=torch.Generator().manual_seed(seed * 7 + 5))
    opt = _make_optimizer(name, model, s, probe, args, lr)
    shuffle = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    steps, epochs = [], []
    curv, direc, step = float("nan"), float("nan"), 0
    t_start = time.perf_counter()
    inner = opt.optimizer if name == "probe" else getattr(opt, "base_optimizer", opt)
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
            h = opt.history[-1] if name == "probe" else {}
            steps.append({"step": step, "epoch": epoch, "loss": lv,
                          "accuracy": float((out.argmax(1) == y).double().mean()), "curvature": curv,
                          "directional_curvature": direc, "probed": int(probed), "lr": h.get("lr", inner.param_groups[0]["lr"]),
                          "scale": h.get("scale"), "reference": h.get("reference")})
            step += 1
        tr_loss, tr_acc, _ = evaluate(model, data.x_train, data.y_train)
        te_loss, te_acc, _ = evaluate(model, data.x_test, data.y_test)
        epochs.append({"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss,
                       "test_acc": te_acc, "mean_curvature": float(np.mean(probes_this_epoch)) if probes_this_epoch
                       else float("nan"), "lr": inner.param_groups[0]["lr"], "epoch_time_s": time.perf_counter() - t0})
    lio.write_csv(run_dir / "steps.csv", steps, STEP_COLUMNS)
    lio.write_csv(run_dir / "epochs.csv", epochs, EPOCH_COLUMNS)
    lio.write_json(run_dir / "config.json", {"experiment": NAME, "optimizer": name, "seed": seed, "settings": s,
                                             "lr": lr if name == "sgd_matched" else None, "model": "mnist_cnn",
                                             "train_time_s": time.perf_counter() - t_start})
    lio.save_checkpoint(run_dir / "final_model.pt", {"model": model.state_dict(), "complete": True})


def run(args) -> int:
    out = pathlib.Path(args.out)
    s = dict(PRESETS[args.preset])
    for key in ("epochs", "probe_every", "probe_dirs", "eps", "ref_decay"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    s["max_scale"] = args.max_scale
    seeds = parse_seeds(args.seeds, args.seed, s["seeds"])
    opts = list(OPTIMIZERS) if not args.optimizers else [o.strip() for o in args.optimizers.split(",")]
    bad = sorted(set(opts) - set(OPTIMIZERS))
    if bad:
        raise ValueError(f"--optimizers: unknown {bad}; choose from {', '.join(OPTIMIZERS)}")
    if "sgd_matched" in opts and "probe" not in opts:
        raise ValueError("--optimizers: sgd_matched trains at the probe run's mean lr, so it needs probe too")
    opts = [o for o in OPTIMIZERS if o in opts]          # probe before sgd_matched
    data, dname, note = load_mnist_like(args.dataset, args.data_root, train_size=s["train"], test_size=s["test"],
                                        seed=args.seed, download=args.download)
    data = data.to(resolve_device(args.device))
    config = {"experiment": NAME, "preset": args.preset, "seed": args.seed, "seeds": seeds, "optimizers": opts,
              "dataset": dname, "dataset_note": note, "data_root": args.data_root, "device": args.device,
              "settings": s, "max_scale": args.max_scale, "min_scale": MIN_SCALE,
              "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0])}
    open_results_folder(out, config, ("experiment", "preset", "seed", "seeds", "optimizers", "dataset", "settings",
                                      "max_scale"))

    def work(cell: Cell) -> None:
        sd = cell.params["seed"]
        for o, rel in zip(cell.params["optimizers"], cell.outputs):
            rd = out / rel
            if not run_is_complete(rd):        # sgd_matched after its probe run: that run's mean lr
                train_one(o, sd, data, s, args, rd, matched_lr(out, sd) if o == "sgd_matched" else None)

    return run_grid(NAME, out, grid_cells(config), work, analyze, shard=args.shard, progress=not args.no_progress)


def grid_cells(cfg: dict) -> list[Cell]:
    """One cell per (seed, optimizer), output ``runs/<optimizer>/seed_<s>``; ``sgd_matched`` shares the cell of
    its ``probe`` run (key ``probe+sgd_matched/seed_<s>``: it needs that run's mean lr, so no shard or rank
    ever waits for another)."""
    cells = []
    for sd in cfg["seeds"]:
        for o in cfg["optimizers"]:
            if o == "sgd_matched":
                continue
            group = [o, "sgd_matched"] if o == "probe" and "sgd_matched" in cfg["optimizers"] else [o]
            cells.append(Cell(f"{'+'.join(group)}/seed_{sd}", {"optimizers": group, "seed": int(sd)},
                              tuple(f"runs/{g}/seed_{sd}" for g in group)))
    return cells


# ------------------------------------------------------------------------------------------ analysis
def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average ``[T]`` → ``[T]``: entry t is the mean of the finite values among the last
    ``window`` entries up to t (NaN when there are none)."""
    v = np.asarray(values, float)
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ok = np.isfinite(v)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    lo = np.maximum(np.arange(1, len(v) + 1) - int(window), 0)
    hi = np.arange(1, len(v) + 1)
    cnt = cn[hi] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (cs[hi] - cs[lo]) / np.maximum(cnt, 1), np.nan)


def _window(n: int) -> int:
    return max(1, min(10, n // 5))


def _run_row(o: str, sd: int, st: list[dict], ep: list[dict], rc: dict, cfg: dict) -> dict:
    pr = [r for r in st if r["probed"] and r["curvature"] is not None]
    c = np.array([r["curvature"] for r in pr], float)
    last = np.array([r["curvature"] for r in pr if r["epoch"] == ep[-1]["epoch"]], float)
    lrs = np.array([r["lr"] for r in st], float)
    row = {"optimizer": o, "seed": sd, "final_test_acc": ep[-1]["test_acc"], "final_test_loss": ep[-1]["test_loss"],
           "final_train_loss": ep[-1]["train_loss"],
           "mean_curvature": float(c.mean()) if c.size else float("nan"),
           "final_curvature": float(last.mean()) if last.size else float("nan"),
           "mean_lr": float(lrs.mean()), "final_lr": float(lrs[-1]), "train_time_s": rc["train_time_s"]}
    sc = np.array([r["scale"] for r in st if r.get("scale") is not None], float)
    if o == "probe" and sc.size:
        mx = cfg["max_scale"]
        row.update({"scale_mean": float(sc.mean()), "scale_min": float(sc.min()), "scale_max": float(sc.max()),
                    "frac_scale_above_1": float(np.mean(sc > 1)), "frac_scale_below_1": float(np.mean(sc < 1)),
                    "frac_scale_at_max": float(np.mean(np.isclose(sc, mx))),
                    "frac_scale_at_min": float(np.mean(np.isclose(sc, MIN_SCALE)))})
    return row


SCALE_COLUMNS = ["scale_mean", "scale_min", "scale_max", "frac_scale_above_1", "frac_scale_below_1",
                 "frac_scale_at_max", "frac_scale_at_min"]


def paired_difference(rows: list[dict], a: str, b: str, column: str) -> tuple[float, float, int]:
    """Mean, 95 % CI half-width and n over seeds of ``column(a) − column(b)`` (seeds present in both, finite)."""
    va = {r["seed"]: r[column] for r in rows if r["optimizer"] == a}
    vb = {r["seed"]: r[column] for r in rows if r["optimizer"] == b}
    d = [float(va[s]) - float(vb[s]) for s in va if s in vb and va[s] is not None and vb[s] is not None]
    return finite_mean_ci(d)


def _caveat(cfg: dict) -> list[str]:
    if cfg["preset"] == "full":
        return []
    s = cfg["settings"]
    return [f"> **Caveat: `{cfg['preset']}` preset** — {cfg['train_size']} training images, {s['epochs']} epoch(s), "
            f"{len(cfg['seeds'])} seed(s). It checks that the pipeline runs and writes every file; its numbers "
            "are not evidence for or against the study's claim (run `--preset full` for that).", ""]


def _plots(out: pathlib.Path, raw: dict, cfg: dict) -> None:
    opts, seeds = cfg["optimizers"], cfg["seeds"]
    colors = dict(zip(OPTIMIZERS, plots.color_cycle(len(OPTIMIZERS))))
    # 1) curvature: one panel per optimizer (raw light, smoothed dark, one line per seed) + an overlay panel
    fig, axes = plots.grid(len(opts) + 1, size=(3.4, 2.8), max_cols=3)
    allc = np.concatenate([raw[f"{o}_seed{sd}_curvature"] for o in opts for sd in seeds])
    allc = allc[np.isfinite(allc) & (allc > 0)]
    ylim = (allc.min() / 1.3, allc.max() * 1.3) if allc.size else None
    for ax, o in zip(axes, opts):
        for sd in seeds:
            x, c = raw[f"{o}_seed{sd}_probe_steps"], raw[f"{o}_seed{sd}_curvature"]
            ax.plot(x, c, "-", lw=0.8, color=colors[o], alpha=0.3)
            ax.plot(x, smooth(c, _window(len(c))), "-", lw=1.6, color=colors[o])
        ax.set_title(o, fontsize=9)
    ax = axes[len(opts)]
    for o in opts:
        ls, mk = STYLES[o]
        for j, sd in enumerate(seeds):
            x, c = raw[f"{o}_seed{sd}_probe_steps"], raw[f"{o}_seed{sd}_curvature"]
            ax.plot(x, smooth(c, _window(len(c))), ls, marker=mk, ms=3, markevery=max(1, len(x) // 8), lw=1.3,
                    color=colors[o], label=o if j == 0 else None)
    ax.set_title("smoothed, all optimizers", fontsize=9)
    for ax in axes:
        ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_xlabel("training step")
        ax.set_ylabel("curvature mean ‖Δg‖/ε", fontsize=8)
        ax.grid(alpha=0.3)
    fig.legend(*axes[len(opts)].get_legend_handles_labels(), loc="lower center", ncol=len(opts), fontsize=7,
               frameon=False)
    w = _window(len(raw[f"{opts[0]}_seed{seeds[0]}_curvature"]))
    fig.suptitle(f"probed curvature (light: every probe; dark: trailing mean over {w} probes; one line per seed)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    plots.save(fig, out / "curvature_over_training.png", dpi=DPI)

    # 2) learning rates (identical series drawn once, labelled together), probe scale, probe curvature vs reference
    fig, axes = plots.new_figure(3, 1, (4.2, 3.4))
    ax = axes[0, 0]
    series: list[tuple[list[str], np.ndarray]] = []
    for o in opts:
        for sd in seeds:
            lr = raw[f"{o}_seed{sd}_lr"]
            lab = o if len(seeds) == 1 else f"{o} s{sd}"
            same = next((g for g in series if g[1].shape == lr.shape and np.allclose(g[1], lr, rtol=1e-12)), None)
            if same is not None:
                same[0].append(lab)
            else:
                series.append(([lab], lr))
    for labs, lr in series:
        o = labs[0].split(" ")[0]
        ls, mk = STYLES[o]
        ax.plot(np.arange(len(lr)), lr, ls, marker=mk, ms=3, markevery=max(1, len(lr) // 8), lw=1.3,
                color=colors[o], label=", ".join(labs))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate per step", fontsize=9)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax = axes[0, 1]
    if "probe" in opts:
        for j, sd in enumerate(seeds):
            sc = raw[f"probe_seed{sd}_scale"]
            ax.plot(np.arange(len(sc)), sc, SEED_LINES[j % len(SEED_LINES)], lw=1.2, color=colors["probe"],
                    label=f"seed {sd}")
        for v, lab in ((cfg["max_scale"], "max"), (1.0, "1"), (MIN_SCALE, "min")):
            ax.axhline(v, color="gray", ls="--", lw=0.8)
            ax.text(1.0, v, f" {lab}", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="gray")
        ax.set_yscale("log")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax.set_xlabel("training step")
    ax.set_ylabel("probe lr scale (lr / base lr)")
    ax.set_title("probe: lr scale = clip(√(c_ref / c))", fontsize=9)
    ax = axes[0, 2]
    if "probe" in opts:
        for j, sd in enumerate(seeds):
            x, ls = raw[f"probe_seed{sd}_probe_steps"], SEED_LINES[j % len(SEED_LINES)]
            ax.plot(x, raw[f"probe_seed{sd}_curvature"], ls, lw=1.0, color=colors["probe"], label=f"probed c, seed {sd}")
            ax.plot(x, raw[f"probe_seed{sd}_reference"], ls, lw=1.4, color="k", label=f"c_ref, seed {sd}")
        ax.set_yscale("log")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.set_xlabel("training step")
    ax.set_ylabel("curvature mean ‖Δg‖/ε")
    ax.set_title(f"probe: c and its running reference (decay {cfg['settings']['ref_decay']})", fontsize=9)
    for a in axes.ravel():
        a.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, out / "lr_scale.png", dpi=DPI)

    # 3) training loss (moving average) and test accuracy per epoch
    fig, axes = plots.new_figure(2, 1, (4.6, 3.4))
    for o in opts:
        ls, mk = STYLES[o]
        for j, sd in enumerate(seeds):
            lab = o if j == 0 else None
            loss = raw[f"{o}_seed{sd}_loss"]
            w = _window(len(loss))
            axes[0, 0].plot(np.arange(len(loss)), smooth(loss, w), ls, lw=1.3, color=colors[o], label=lab,
                            marker=mk, ms=3, markevery=max(1, len(loss) // 8))
            acc = raw[f"{o}_seed{sd}_test_acc"]
            axes[0, 1].plot(np.arange(1, len(acc) + 1), acc, ls, marker=mk, ms=4, lw=1.2, color=colors[o], label=lab)
    axes[0, 0].set_xlabel("training step")
    axes[0, 0].set_ylabel("training loss (trailing mean, nats)")
    axes[0, 1].set_xlabel("epoch")
    axes[0, 1].set_ylabel("test accuracy (fraction)")
    axes[0, 1].xaxis.set_major_locator(plots.plt.MaxNLocator(integer=True))
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=len(opts), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    plots.save(fig, out / "accuracy_over_training.png", dpi=DPI)


def _statements(rows: list[dict], table: list[dict], cfg: dict) -> list[str]:
    by = {r["optimizer"]: r for r in table}
    lines = []
    best = max(table, key=lambda r: r["final_test_acc_mean"])
    lines.append(f"- Highest final test accuracy: `{best['optimizer']}` "
                 f"({fmt_ci(best['final_test_acc_mean'], best['final_test_acc_ci95'], best['n'], '.4f')}, "
                 f"n = {best['n']}).")
    if "probe" in by:
        p = by["probe"]
        lines.append(f"- The probe's lr scale (running reference, decay {cfg['settings']['ref_decay']}): mean "
                     f"{fmt_ci(p['scale_mean_mean'], p['scale_mean_ci95'], p['n'], '.3f')}, range "
                     f"{fmt(min(r['scale_min'] for r in rows if r['optimizer'] == 'probe'), '.3f')}–"
                     f"{fmt(max(r['scale_max'] for r in rows if r['optimizer'] == 'probe'), '.3f')}; above 1 on "
                     f"{fmt(100 * p['frac_scale_above_1_mean'], '.0f')} % of steps, below 1 on "
                     f"{fmt(100 * p['frac_scale_below_1_mean'], '.0f')} %, at the cap {cfg['max_scale']} on "
                     f"{fmt(100 * p['frac_scale_at_max_mean'], '.0f')} %, at the floor {MIN_SCALE} on "
                     f"{fmt(100 * p['frac_scale_at_min_mean'], '.0f')} % (mean over {p['n']} seed(s)).")
        lines.append(f"- Mean lr: probe {fmt_ci(p['mean_lr_mean'], p['mean_lr_ci95'], p['n'], '.4g')} vs the SGD base "
                     f"{cfg['settings']['sgd_lr']}" + ("; `sgd_matched` ran at that mean lr, per seed"
                                                       if "sgd_matched" in by else "") + ".")
    for other in ("sgd_matched", "sgd", "adam", "sam"):
        if "probe" not in by or other not in by:
            continue
        m, h, n = paired_difference(rows, "probe", other, "final_test_acc")
        if n < 2:
            verdict = "one seed, no CI: no conclusion"
        elif m - h > 0 or m + h < 0:
            verdict = "the 95 % CI excludes 0"
        else:
            verdict = "the 95 % CI includes 0: no difference shown (null result at this n)"
        ctrl = " (the matched-lr control: same mean lr, constant)" if other == "sgd_matched" else ""
        lines.append(f"- probe − {other}{ctrl}: Δ final test accuracy = {fmt_ci(m, h, n, '+.4f')} "
                     f"(paired over n = {n} seed(s)) — {verdict}.")
    for col, what in (("mean_curvature", "mean over training"), ("final_curvature", "mean over the last epoch")):
        order = sorted(table, key=lambda r: r[f"{col}_mean"] if np.isfinite(r[f"{col}_mean"]) else np.inf)
        lines.append(f"- Probe curvature ({what}), lowest first: " + ", ".join(
            f"`{r['optimizer']}` {fmt_ci(r[f'{col}_mean'], r[f'{col}_ci95'], r[f'{col}_n'], '.4g')}" for r in order)
            + ".")
    if "probe" in by and "sgd_matched" in by:
        m, h, n = paired_difference(rows, "probe", "sgd_matched", "final_curvature")
        lines.append(f"- probe − sgd_matched, final curvature: {fmt_ci(m, h, n, '+.4g')} (paired, n = {n}).")
    return lines


def analyze(out) -> int:
    """Regenerate every table, figure and ``summary.md`` of a probe results folder from its run folders."""
    out = pathlib.Path(out)
    cfg = lio.read_json(out / "experiment_config.json")
    require_complete(out, grid_cells(cfg))            # refuses a torn or partial run, naming the cells to resume
    rows, raw = [], {}
    for sd in cfg["seeds"]:
        for o in cfg["optimizers"]:
            rd = out / "runs" / o / f"seed_{sd}"
            st, ep = lio.read_csv(rd / "steps.csv"), lio.read_csv(rd / "epochs.csv")
            rc = lio.read_json(rd / "config.json")
            rows.append(_run_row(o, sd, st, ep, rc, cfg))
            pr = [r for r in st if r["probed"] and r["curvature"] is not None]
            raw[f"{o}_seed{sd}_probe_steps"] = np.array([r["step"] for r in pr], np.int64)
            raw[f"{o}_seed{sd}_curvature"] = np.array([r["curvature"] for r in pr], float)
            raw[f"{o}_seed{sd}_lr"] = np.array([r["lr"] for r in st], float)
            raw[f"{o}_seed{sd}_test_acc"] = np.array([r["test_acc"] for r in ep], float)
            raw[f"{o}_seed{sd}_loss"] = np.array([r["loss"] for r in st], float)
            if o == "probe":
                raw[f"{o}_seed{sd}_scale"] = np.array([r["scale"] for r in st], float)
                raw[f"{o}_seed{sd}_reference"] = np.array([r["reference"] for r in pr], float)
    base_cols = ["optimizer", "seed", "final_test_acc", "final_test_loss", "final_train_loss", "mean_curvature",
                 "final_curvature", "mean_lr", "final_lr", "train_time_s"]
    lio.write_csv(out / "results.csv", rows, base_cols + (SCALE_COLUMNS if "probe" in cfg["optimizers"] else []))
    cols = ["final_test_acc", "final_test_loss", "mean_curvature", "final_curvature", "mean_lr", "train_time_s",
            *SCALE_COLUMNS]
    table = group_mean_ci(rows, "optimizer", cols, order=cfg["optimizers"])
    lio.write_csv(out / "summary_table.csv", table)
    lio.write_npz(out / "probe_data.npz", optimizers=np.array(cfg["optimizers"]), seeds=np.array(cfg["seeds"]), **raw)
    _plots(out, raw, cfg)
    s = cfg["settings"]
    data_line = f"{cfg['dataset']} ({cfg['train_size']} train / {cfg['test_size']} test)"
    if cfg.get("dataset_note"):
        data_line += f" — {cfg['dataset_note']}"
    body = [[r["optimizer"], r["n"], fmt_ci(r["mean_lr_mean"], r["mean_lr_ci95"], r["n"], ".4g"),
             fmt_ci(r["final_test_acc_mean"], r["final_test_acc_ci95"], r["n"], ".4f"),
             fmt_ci(r["final_test_loss_mean"], r["final_test_loss_ci95"], r["n"], ".4f"),
             fmt_ci(r["mean_curvature_mean"], r["mean_curvature_ci95"], r["mean_curvature_n"], ".4g"),
             fmt_ci(r["final_curvature_mean"], r["final_curvature_ci95"], r["final_curvature_n"], ".4g")]
            for r in table]
    text = [f"# Curvature-probe optimizer vs SGD, Adam, SAM (`lamda run probe --preset {cfg['preset']}`)", "",
            *_caveat(cfg),
            f"Data: {data_line}; MNIST CNN; {s['epochs']} epoch(s), batch {s['batch']}; seeds {cfg['seeds']} "
            f"(n = {len(cfg['seeds'])}). SGD lr {s['sgd_lr']} (momentum 0.9), Adam lr {s['adam_lr']}, SAM ρ {s['rho']} "
            f"around that SGD; probe every {s['probe_every']} batches, N = {s['probe_dirs']} random unit parameter "
            f"directions, ε = {s['eps']}.", "",
            "Definitions. Curvature c = mean over the N directions of ‖g(θ + εu) − g(θ)‖ / ε on the current batch "
            "(≈ mean ‖H u‖), probed every k batches for every optimizer (passively for all but `probe`). `probe` "
            f"sets lr = base · clip(√(c_ref / c), {MIN_SCALE}, {cfg['max_scale']}), with c_ref a running reference: "
            f"the exponential moving average (decay {s['ref_decay']}) of log c over the earlier probes, i.e. "
            "c_ref ← c_ref^β · c^(1−β) (the first probe gives scale 1). `sgd_matched` = SGD at a constant lr equal to the same seed's probe run's mean lr over its "
            "steps. Mean curvature = mean over all probes of a run; final curvature = mean over the probes of the last "
            "epoch. ± = 95 % Student-t CI over seeds ('± n/a' for n = 1); probe − X differences are paired by seed.", "",
            "## Per optimizer (mean ± 95 % CI over seeds)", "",
            markdown_table(["optimizer", "seeds", "mean lr", "test acc", "test loss", "mean curvature",
                            "final curvature"], body),
            "", "## Findings (computed from the table)", "", *_statements(rows, table, cfg), "",
            "Files: `results.csv`, `summary_table.csv`, `probe_data.npz`, `curvature_over_training.png`, "
            "`lr_scale.png`, `accuracy_over_training.png`, `runs/<optimizer>/seed_<s>/{steps,epochs}.csv`.", ""]
    lio.write_text(out / "summary.md", "\n".join(text))
    return 0


def add_arguments(p) -> None:
    add_mnist_like_argument(p)
    p.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the preset's count from --seed)")
    p.add_argument("--optimizers", default=None,
                   help=f"comma-separated subset of {', '.join(OPTIMIZERS)} (sgd_matched needs probe)")
    p.add_argument("--epochs", type=arg_number(int, low=1), default=None, help="override the preset's epochs (>= 1)")
    p.add_argument("--probe-every", type=arg_number(int, low=1), default=None, help="probe every k batches (>= 1)")
    p.add_argument("--probe-dirs", type=arg_number(int, low=1), default=None,
                   help="N random directions per probe (>= 1)")
    p.add_argument("--eps", type=arg_number(float, low=0.0, high=1.0, low_open=True), default=None,
                   help="finite-difference step ε in parameter units, in (0, 1] (default 1e-3)")
    p.add_argument("--max-scale", type=arg_number(float, low=1.0, high=100.0), default=2.0,
                   help="largest lr multiplier of the probe optimizer, in [1, 100] (default 2.0)")
    p.add_argument("--ref-decay", type=arg_number(float, low=0.0, high=1.0, low_open=True, high_open=True),
                   default=None, help="decay of the running reference curvature (EMA of log c), in (0, 1) (default: the preset's, "
                        "0.9 full, 0.7 quick/smoke)")


register(Experiment(name=NAME, help="curvature-probe optimizer vs SGD, Adam, SAM and a matched-lr SGD on MNIST",
                    add_arguments=add_arguments, run=run, analyze=analyze))
