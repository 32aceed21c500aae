"""Evaluation, its own room: behaviour sets, refusal judges and attack presets shared by `hf-robust eval`, the
training commands' before/after numbers, the callbacks and the model cards. Every reported number carries the preset
that produced it."""

from ..cli import register_command

register_command("eval", "hf_robust.evaluation.command",
                 "attack a saved model or adapter on a behaviour set; write the report, figures and card")

from .behaviours import derived_target, load_behaviours
from .benign import BENIGN_REQUESTS, HARMFUL_WORDS, load_benign
from .judges import (
                     REFUSAL_JUDGES,
                     REFUSAL_PHRASES_ANY_CASE_V1,
                     REFUSAL_SUBSTRINGS_GCG_V1,
                     RefusalJudge,
                     judge_refusals,
                     refusal_judge,
)
from .plots import plot_budget_sweep
from .presets import (
                 EVALUATION_PRESETS,
                 AttackPreset,
                 at_least_as_strong,
                 get_preset,
                 require_at_least_as_strong,
                 resolve_attack,
)
from .sweep import attack_budget_sweep

__all__ = ["REFUSAL_JUDGES", "REFUSAL_PHRASES_ANY_CASE_V1", "REFUSAL_SUBSTRINGS_GCG_V1", "RefusalJudge",
           "derived_target", "judge_refusals", "load_behaviours", "refusal_judge"]
__all__ += ["BENIGN_REQUESTS", "HARMFUL_WORDS", "load_benign"]
__all__ += ["EVALUATION_PRESETS", "AttackPreset", "at_least_as_strong", "attack_budget_sweep", "get_preset",
            "plot_budget_sweep", "require_at_least_as_strong", "resolve_attack"]
