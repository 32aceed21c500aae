"""Robustness model cards and Hub pushes.

Measured robustness lands in the card's standard `model-index` metadata through huggingface_hub's
`ModelCardData` / `EvalResult`, so the Hub, leaderboards and `ModelCard.load(...).data.eval_results` read it
like any other evaluation. One `RobustnessResult` becomes one `EvalResult`:

    RobustnessResult          EvalResult (model-index)
    task                 ->   task_type       (task.type)
    dataset              ->   dataset_name    (dataset.name)
    dataset_type         ->   dataset_type    (dataset.type)
    split                ->   dataset_split   (dataset.split)
    metric               ->   metric_type     (metrics[].type)
    value                ->   metric_value    (metrics[].value)
    attack               ->   metric_config   (metrics[].config), also in metric_name "<metric> under <attack>"
    attack_config        ->   metric_args     (metrics[].args)
    attack_preset        ->   metric_args["preset"], also in metric_name "<metric> under <attack> (<preset>)"

The attack and its settings sit on the metric, not on the dataset, because huggingface_hub groups results by
(task, dataset type, config, split, revision) and keeps the dataset fields of the first result of each group only.
"""

from .card import SUPPORTED_LIBRARIES, build_robustness_card, diffusers_usage
from .push import PushResult, push_robust_to_hub
from .results import RobustnessResult, robustness_results_from_card

__all__ = [
    "RobustnessResult",
    "PushResult",
    "build_robustness_card",
    "robustness_results_from_card",
    "push_robust_to_hub",
    "diffusers_usage",
    "SUPPORTED_LIBRARIES",
]
