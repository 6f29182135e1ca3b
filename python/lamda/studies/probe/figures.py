"""The probe study's figures.

The probed curvature, the learning rates and the probe's lr scale, loss and accuracy over training.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ... import plots
from .config import MIN_SCALE, OPTIMIZERS
from .series import smooth, window

__all__ = ["curvature_figure", "lr_scale_figure", "accuracy_figure"]

SEED_LINES = ("-", "--", ":", "-.")          # one line style per seed in the probe's own panels
STYLES = {"sgd": ("-", "o"), "adam": ("--", "s"), "sam": ("-.", "^"), "probe": ("-", "D"),
          "sgd_matched": (":", "v")}


def _colors() -> dict:
    return dict(zip(OPTIMIZERS, plots.color_cycle(len(OPTIMIZERS))))


def curvature_figure(path: pathlib.Path, raw: dict, cfg: dict) -> None:
    """One panel per optimizer and an overlay of the smoothed curves, on one log y scale.

    In each panel every probe is light, the trailing mean dark, one line per seed.
    """
    opts, seeds, colors = cfg["optimizers"], cfg["seeds"], _colors()
    fig, axes = plots.grid(len(opts) + 1, size=(3.4, 2.8), max_cols=3)
    allc = np.concatenate([raw[f"{o}_seed{sd}_curvature"] for o in opts for sd in seeds])
    allc = allc[np.isfinite(allc) & (allc > 0)]
    ylim = (allc.min() / 1.3, allc.max() * 1.3) if allc.size else None
    for ax, o in zip(axes, opts):
        for sd in seeds:
            x, c = raw[f"{o}_seed{sd}_probe_steps"], raw[f"{o}_seed{sd}_curvature"]
            ax.plot(x, c, "-", lw=0.8, color=colors[o], alpha=0.3)
            ax.plot(x, smooth(c, window(len(c))), "-", lw=1.6, color=colors[o])
        ax.set_title(o, fontsize=9)
    ax = axes[len(opts)]
    for o in opts:
        ls, mk = STYLES[o]
        for j, sd in enumerate(seeds):
            x, c = raw[f"{o}_seed{sd}_probe_steps"], raw[f"{o}_seed{sd}_curvature"]
            ax.plot(x, smooth(c, window(len(c))), ls, marker=mk, ms=3, markevery=max(1, len(x) // 8), lw=1.3,
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
    w = window(len(raw[f"{opts[0]}_seed{seeds[0]}_curvature"]))
    fig.suptitle(f"probed curvature (light: every probe; dark: trailing mean over {w} probes; one line per seed)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    plots.save(fig, path)


def _lr_panel(ax, raw: dict, opts, seeds, colors) -> None:
    """Learning rate per step; identical series are drawn once and labelled together."""
    groups: list[tuple[list[str], np.ndarray]] = []
    for o in opts:
        for sd in seeds:
            lr = raw[f"{o}_seed{sd}_lr"]
            lab = o if len(seeds) == 1 else f"{o} s{sd}"
            same = next((g for g in groups if g[1].shape == lr.shape and np.allclose(g[1], lr, rtol=1e-12)), None)
            if same is not None:
                same[0].append(lab)
            else:
                groups.append(([lab], lr))
    for labs, lr in groups:
        o = labs[0].split(" ")[0]
        ls, mk = STYLES[o]
        ax.plot(np.arange(len(lr)), lr, ls, marker=mk, ms=3, markevery=max(1, len(lr) // 8), lw=1.3,
                color=colors[o], label=", ".join(labs))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate per step", fontsize=9)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def _scale_panel(ax, raw: dict, seeds, color, max_scale: float) -> None:
    """The probe's lr scale per step, with its cap, 1 and its floor."""
    for j, sd in enumerate(seeds):
        sc = raw[f"probe_seed{sd}_scale"]
        ax.plot(np.arange(len(sc)), sc, SEED_LINES[j % len(SEED_LINES)], lw=1.2, color=color, label=f"seed {sd}")
    for v, lab in ((max_scale, "max"), (1.0, "1"), (MIN_SCALE, "min")):
        ax.axhline(v, color="gray", ls="--", lw=0.8)
        ax.text(1.0, v, f" {lab}", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="gray")
    ax.set_yscale("log")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)


def _reference_panel(ax, raw: dict, seeds, color) -> None:
    """The probe's probed curvature and its running reference."""
    for j, sd in enumerate(seeds):
        x, ls = raw[f"probe_seed{sd}_probe_steps"], SEED_LINES[j % len(SEED_LINES)]
        ax.plot(x, raw[f"probe_seed{sd}_curvature"], ls, lw=1.0, color=color, label=f"probed c, seed {sd}")
        ax.plot(x, raw[f"probe_seed{sd}_reference"], ls, lw=1.4, color="k", label=f"c_ref, seed {sd}")
    ax.set_yscale("log")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def lr_scale_figure(path: pathlib.Path, raw: dict, cfg: dict) -> None:
    """Learning rates per step, the probe's lr scale, and the probe's curvature against its reference."""
    opts, seeds, colors = cfg["optimizers"], cfg["seeds"], _colors()
    fig, axes = plots.new_figure(3, 1, (4.2, 3.4))
    _lr_panel(axes[0, 0], raw, opts, seeds, colors)
    if "probe" in opts:
        _scale_panel(axes[0, 1], raw, seeds, colors["probe"], cfg["max_scale"])
        _reference_panel(axes[0, 2], raw, seeds, colors["probe"])
    axes[0, 1].set_xlabel("training step")
    axes[0, 1].set_ylabel("probe lr scale (lr / base lr)")
    axes[0, 1].set_title("probe: lr scale = clip(√(c_ref / c))", fontsize=9)
    axes[0, 2].set_xlabel("training step")
    axes[0, 2].set_ylabel("curvature mean ‖Δg‖/ε")
    axes[0, 2].set_title(f"probe: c and its running reference (decay {cfg['settings']['ref_decay']})", fontsize=9)
    for a in axes.ravel():
        a.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)


def accuracy_figure(path: pathlib.Path, raw: dict, cfg: dict) -> None:
    """Training loss (trailing mean) per step and test accuracy per epoch, one line per (optimizer, seed)."""
    opts, seeds, colors = cfg["optimizers"], cfg["seeds"], _colors()
    fig, axes = plots.new_figure(2, 1, (4.6, 3.4))
    for o in opts:
        ls, mk = STYLES[o]
        for j, sd in enumerate(seeds):
            lab = o if j == 0 else None
            loss = raw[f"{o}_seed{sd}_loss"]
            axes[0, 0].plot(np.arange(len(loss)), smooth(loss, window(len(loss))), ls, lw=1.3, color=colors[o],
                            label=lab, marker=mk, ms=3, markevery=max(1, len(loss) // 8))
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
    plots.save(fig, path)
