"""``lamda run landscape``: architecture vs loss landscape, plain CNN vs ResNet on CIFAR-10.

Two architectures of the study's sizes — ``cnn`` ([`lamda.models.CifarCNN`][lamda.models.CifarCNN], 3 conv 64→128→256 +
2 FC, ≈ 1.8 M parameters) and ``resnet`` ([`lamda.models.CifarResNet`][lamda.models.CifarResNet], 6 residual blocks with
batch norm, ≈ 2.1 M; sizes in [`lamda.models.STUDY_SIZES`][lamda.models.STUDY_SIZES]) — are trained on CIFAR-10 with
several seeds (Adam, cosine schedule, crop + flip augmentation; full preset 15 epochs). For every trained model (eval
mode):

- the top-k Hessian eigenvalues (``which="LA"``, k ≥ 15) and the ``k_neg`` most negative ones (``which="SA"``)
  of the mean cross-entropy over a fixed training subset (HVP + Lanczos), each pair checked by its own
  residual ``‖Hy − θy‖ / max|θ|`` ([`lamda.landscape.eigcheck.checked_eigs`][lamda.landscape.eigcheck.checked_eigs]);
  unconverged pairs are kept in the files but left out of every eigenvalue statistic and plot;
- the condition-number estimate κ̂ = λ_max / |λ_min| over the computed (converged) eigenvalues, and the number
  of negative eigenvalues among them;
- ρ-sharpness with ρ = 0.05 (adversarial, and random for reference; ``lamda.landscape.sharpness``).

Per architecture: linear mode connectivity for every pair of seeds on the run's test set (the data of the
model table), with the study's barrier ``max_α L(α) − min(L(0), L(1))`` and the excess over the straight line;
batch-norm statistics re-estimated at every α on training data (ResNet; the plain CNN has none). The
filter-normalised 2-D loss surface around the first seed's model, on an odd grid (the trained point is the
centre node), plotted for both architectures side by side on one colour scale. Across all trained models:
correlations of sharpness, λ_max and κ̂ with test accuracy (Pearson r, p, bootstrap CI, n).

The package is named after the study's question (the architecture) to keep it apart from the tools of
[`lamda.landscape`][lamda.landscape]. Modules: [`config`][lamda.studies.architecture.config] (architectures, presets,
the two-stage grid, flags), [`run`][lamda.studies.architecture.run] (training, Hessian, sharpness, paths, surfaces),
[`analysis`][lamda.studies.architecture.analysis], [`figures`][lamda.studies.architecture.figures],
[`report`][lamda.studies.architecture.report] (``summary.md``).

Output tree under ``--out``:

    config.json experiment_config.json summary.md summary_table.png
    results.csv          one row per model (RESULT_COLUMNS)
    connectivity.csv     one row per seed pair (CONNECTIVITY_COLUMNS)
    correlations.csv     quantity, pearson_r, p_value, ci_low, ci_high, n, note
    landscape_data.npz   eigenvalues (+ residuals, converged flags) per model, connectivity paths
    training_curves.png hessian_spectrum.png mode_connectivity.png metrics_comparison.png
    correlation_analysis.png surface_contour.png surface_3d_<arch>.png
    runs/<arch>/seed_<s>/ training_metrics.csv config.json final_model.pt analysis.json hessian.npz
    pairs/connectivity_<arch>_<a>-<b>.json  pairs/surface_<arch>.npz
"""
from .. import Experiment, register
from . import analysis, config, run

register(Experiment(name=config.NAME, help="plain CNN vs ResNet on CIFAR-10: Hessian, sharpness, connectivity, surfaces",
                    add_arguments=config.add_arguments, run=run.run, analyze=analysis.analyze, ddp=True))
