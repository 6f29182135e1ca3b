"""``lamda run probe``: the curvature-probe ("bore hole") optimizer vs SGD, Adam and SAM.

The MNIST CNN is trained for 10 epochs (full) with

- ``sgd``          SGD with momentum 0.9 at the base lr;
- ``adam``         Adam (lr 1e-3);
- ``sam``          SAM (ρ = 0.05) around the same SGD;
- ``probe``        the same SGD wrapped in [`CurvatureAdaptiveLR`][lamda.landscape.CurvatureAdaptiveLR]: every ``k``
                   batches a [`CurvatureProbe`][lamda.landscape.CurvatureProbe] takes N random unit parameter
                   directions and the finite-difference gradient change ``c = mean ‖g(θ + εu) − g(θ)‖ / ε``; the
                   learning rate becomes ``base · clip((c_ref / c)^0.5, 0.1, max_scale)`` with a **running
                   reference** ``c_ref`` (an exponential moving average of log c over the earlier probes, decay
                   ``ref_decay``), so the scale moves both ways around 1;
- ``sgd_matched``  the control: SGD (momentum 0.9) at a constant lr equal to the mean lr of the same seed's
                   ``probe`` run — it separates "adapting the lr" from "a different average lr".

The same probe (its own generator; the training RNG streams are untouched) also runs passively every ``k``
batches for the other optimizers, so the curvature is logged for all of them. Per step: loss, batch accuracy,
curvature (latest probe), learning rate, and for ``probe`` the scale and the reference; per epoch: train/test
loss and accuracy and the mean curvature.

Modules: [`config`][lamda.studies.probe.config] (optimizers, presets, the grid, flags),
[`training`][lamda.studies.probe.training] (one run), [`run`][lamda.studies.probe.run] (the cells),
[`series`][lamda.studies.probe.series] (per-run series, smoothing), [`analysis`][lamda.studies.probe.analysis] (rows,
paired differences, ``analyze``), [`figures`][lamda.studies.probe.figures], [`report`][lamda.studies.probe.report]
(``summary.md``).

Output tree under ``--out``:

    config.json experiment_config.json summary.md
    results.csv         optimizer, seed, final_test_acc, ..., mean_curvature, final_curvature, mean_lr, ...
    summary_table.csv   per optimizer: mean, std, 95 % CI half-width (ci95), n
    probe_data.npz      per run: probe steps, curvatures, lr and scale per step, test accuracy per epoch
    curvature_over_training.png lr_scale.png accuracy_over_training.png
    runs/<optimizer>/seed_<s>/ steps.csv epochs.csv config.json final_model.pt (written last)
"""
from .. import Experiment, register
from . import analysis, config, run

register(Experiment(name=config.NAME, help="curvature-probe optimizer vs SGD, Adam, SAM and a matched-lr SGD on MNIST",
                    add_arguments=config.add_arguments, run=run.run, analyze=analysis.analyze))
