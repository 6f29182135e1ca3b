"""``lamda run diagnostic``: λ as a training diagnostic across seven regularisers.

The same model is trained under each method (baseline; dropout; weight decay; data augmentation; label smoothing;
SAM; input-gradient penalty) and λ is measured during training on a fixed set of test points on the schedule of
[`lamda.schedule`][lamda.schedule]: K = 15 input directions drawn once per run and shared by every point
(``--direction-mode shared``, the study's protocol; ``per-point`` draws them per point), orders 1–6. Afterwards the
post-hoc analyses run on the saved arrays alone. Each run is one cell of the shared grid runner
([`lamda.studies.runner`][lamda.studies.runner]).

Modules: [`config`][lamda.studies.diagnostic.config] (presets, method families, the grid, flags),
[`run`][lamda.studies.diagnostic.run] (training the cells), [`runs`][lamda.studies.diagnostic.runs] (the finished runs
as the analyses read them), [`analysis`][lamda.studies.diagnostic.analysis] (statistics and the ``analyze`` entry
point), [`figures`][lamda.studies.diagnostic.figures], [`report`][lamda.studies.diagnostic.report] (``summary.md``) and
[`validation`][lamda.studies.diagnostic.validation] (the four validation analyses).

Output tree under ``--out`` (per data set; with ``--dataset both`` CIFAR-10 goes into ``cifar10/``; with
several ``--seeds`` every run folder holds one ``seed_<s>/`` folder per seed):

    experiment_config.json, summary.md
    00_summary/  all_methods_comparison.png performance_vs_lambda.png generalization_gap_vs_lambda.png
                 calibration_vs_lambda.png summary_statistics.csv run_statistics.csv
    01_baseline/ training_metrics.csv lambda_data.npz lambda_evolution.png final_model.pt config.json
                 baseline_comparison.png
    02_dropout/dropout_0.3/ ...  02_dropout/dropout_comparison.png
    03_weight_decay/wd_1e-4/ ... wd_comparison.png      04_data_augmentation/rotation_translation/ ...
    05_label_smoothing/smooth_0.05/ ... smooth_comparison.png   06_sam/sam_rho_0.05/ ... sam_comparison.png
    07_input_gradient_penalty/igp_0.01/ ... igp_comparison.png
    validation_analysis/ direction_convergence/ order_sensitivity/ temporal_directional_stability/
                         joint_K_order_optimization/     (file names: validation.validation_files)
"""
from .. import Experiment, register
from . import analysis, config, run

register(Experiment(name=config.NAME, help="λ as a training diagnostic across seven regularisers",
                    add_arguments=config.add_arguments, run=run.run, analyze=analysis.analyze, ddp=True))
