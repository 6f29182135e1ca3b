"""``lamda run spectrum``: weight-decay sweep vs Hessian spectrum.

The sigmoid MLP 784-128-128-10 is trained on MNIST once per L2 strength on a linear grid from 0 to ``--l2-max``
(0.09) in ``--steps`` points (full: 451, i.e. steps of 0.0002) with Adam (lr 1.5e-3, batch 64), loss =
cross-entropy + L2 · Σ θ² over all parameters, and early stopping on the (unregularised) training loss with
patience 5 (the best epoch's weights are kept; a model that reaches ``max_epochs`` without the patience running
out is flagged "epoch cap"). Then the top-k (30) eigenpairs of the Hessian of the mean cross-entropy over the
training data (float64, eval mode; the L2 term would add 2·L2 to every eigenvalue and is left out, as in the
study) — by largest magnitude (``--which LM``, the study's choice; ``LA`` is an option) — come from
forward-over-reverse HVPs + Lanczos (``--method eigsh``: scipy's ARPACK), each pair then checked by its residual
``‖Hy − θy‖ / max|θ|`` (:func:`lamda.landscape.eigcheck.checked_eigs`). ``--curvature ggn`` takes the same top-k of
the generalised Gauss–Newton matrix ``Jᵀ ∇²ℓ J`` instead (same data, settings and start vector), ``--curvature
both`` of the Hessian and the GGN, and the analysis then draws the two top-k spectra side by side and compares them
rank by rank (:mod:`.comparison`); the first curvature computed (the Hessian when computed) gives ``Lambda_Max`` and
the λ_max figures. A folder whose config names no curvature holds the Hessian's. Every L2 value starts from the
same initialisation (seed = the run ID), so cells are independent, resumable and shardable.

Modules: :mod:`.config` (presets, the grid, file names, flags), :mod:`.training` (one model), :mod:`.curvature`
(the curvature whose eigenpairs are taken: its data, gradient and solver — the one place a curvature other than
the Hessian plugs in), :mod:`.run` (the cells and their files), :mod:`.analysis`, :mod:`.comparison` (Hessian vs
GGN), :mod:`.figures`, :mod:`.report` (``summary.md``).

Files (names as in the study, under ``test_data/``; ``{ID}`` = the run seed, ``{L2}`` formatted ``%.5f``):

    test_data/Model-{ID}.csv                     L2_strength, Train_Loss, Train_Reg_Loss, Test_Loss,
                                                 Test_Accuracy (%), Train_Accuracy (%), Epochs, Lambda_Max
    test_data/gradients-{ID}-{L2}.csv            parameter, flat_index, gradient (mean CE over the Hessian data)
    test_data/Hessian-eigenvalues-{ID}-{L2}.csv  index, eigenvalue (index 1 = largest |λ| for LM)
    test_data/Hessian-eigenvectors-{ID}-{L2}.csv param_index, eigvec_1 … eigvec_k (column i ↔ eigenvalue i);
                                                 with ``--eigvec-format npy`` (the full preset's default)
    test_data/Hessian-eigenvectors-{ID}-{L2}.npy instead: float32 ``[P, k]``, column i ↔ eigenvalue i
    test_data/GGN-eigenvalues-{ID}-{L2}.csv      with --curvature ggn|both: the GGN's, as the Hessian's files
    test_data/GGN-eigenvectors-{ID}-{L2}.csv|npy
    test_data/model_weights-{ID}-{L2}.pth        the model's state dict
    config.json experiment_config.json summary.md spectrum.npz (GGN arrays under ggn_* keys)
    spectrum_vs_l2.png lambda_max_vs_test_accuracy.png
    hessian_vs_ggn_spectra.png                   with --curvature both: the two top-k spectra side by side
    cells/{ID}-{L2}.json               per-model record (residuals, flags); the grid runner's completion
                                       markers live under .cells/
"""
from .. import Experiment, register
from . import analysis, config, run

register(Experiment(name=config.NAME, help="weight-decay sweep vs top-k Hessian (and/or GGN) spectrum of a sigmoid MLP",
                    add_arguments=config.add_arguments, run=run.run, analyze=analysis.analyze))
