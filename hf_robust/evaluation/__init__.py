"""Evaluation, its own room: behaviour sets, refusal judges and attack presets shared by `hf-robust eval`, the
training commands' before/after numbers, the callbacks and the model cards. Every reported number carries the preset
that produced it."""

from .behaviours import derived_target, load_behaviours
from .judges import REFUSAL_SUBSTRINGS_GCG_V1, RefusalJudge, judge_refusals

__all__ = ["REFUSAL_SUBSTRINGS_GCG_V1", "RefusalJudge", "derived_target", "judge_refusals", "load_behaviours"]
