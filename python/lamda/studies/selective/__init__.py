"""``lamda run selective``: class-selective λ regularisation.

MNIST with 20 % seeded label noise, the MNIST CNN with dropout 0.5, Adam 1e-3, batch 128. Conditions:

- ``baseline``      no penalty;
- ``global``        λ penalty ``scale · mean |d_n|`` (n ≤ 3, K = 2 per-point input directions) on every sample;
- ``selective_49``  the same penalty only on samples labelled 4 or 9;
- ``selective_38``  only on samples labelled 3 or 8.

The penalty's value and share of the total loss are logged per epoch (``training_metrics.csv``:
``penalty_lambda_penalty``, ``penalty_share_lambda_penalty``). After training, λ is measured per class pair
(4v9, 3v8, 5v6) on test points near that pair's boundary ([`boundary`][lamda.studies.selective.boundary]).

Modules: [`config`][lamda.studies.selective.config] (conditions, presets, the grid, flags),
[`boundary`][lamda.studies.selective.boundary] (the boundary points and their λ), [`run`][lamda.studies.selective.run]
(training the cells), [`analysis`][lamda.studies.selective.analysis] (rows, selectivity index, ``analyze``),
[`figures`][lamda.studies.selective.figures], [`report`][lamda.studies.selective.report] (``summary.md``).

Output tree under ``--out``:

    config.json experiment_config.json summary.md
    results.csv            condition, seed, test_acc, lambda_<pair>, n_boundary_<pair>, n_candidates_<pair>, ...
    summary_table.csv      per condition: mean, std, 95 % CI half-width (ci95), n
    selectivity.csv        per (condition, seed, target): Δλ target − mean Δλ other pairs (vs the same seed's baseline)
    selectivity_table.csv  per (condition, target): index mean ± 95 % CI over seeds
    selective_data.npz     λ [conditions, seeds, pairs], boundary counts, test accuracy
    lambda_per_pair.png selectivity_index.png penalty_share.png
    runs/<condition>/seed_<s>/  training_metrics.csv config.json boundary_lambda.npz boundary_lambda.json
                                final_model.pt (written last: marks a finished run)
"""
from .. import Experiment, register
from . import analysis, config, run

register(Experiment(name=config.NAME, help="class-selective λ regularisation on noisy MNIST",
                    add_arguments=config.add_arguments, run=run.run, analyze=analysis.analyze, ddp=True))
