import dataclasses
import math
import re

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_robust.erasure.config import AdvUnlearnConfig

REQUIRED = dict(use_cpu=True, report_to="none", save_strategy="no", bf16=False)


def make(tmp_path, **overrides):
    return AdvUnlearnConfig(output_dir=str(tmp_path), **REQUIRED, **overrides)


def test_defaults_follow_the_reference(tmp_path):
    args = make(tmp_path)
    assert (args.eta, args.num_adv_tokens, args.adv_position, args.attack_steps, args.attack_lr) == (
        1.0, 1, "prefix", 30, 1e-3)
    assert (args.attack_mode, args.attack_warmup, args.attack_l2_bound, args.retain_batch) == ("adam", 200, None, 5)
    assert (args.train_layers, args.ddim_steps, args.guidance_scale, args.share_xt) == ("all", 50, 3.0, True)
    assert (args.learning_rate, args.max_steps, args.per_device_train_batch_size) == (1e-5, 1000, 1)
    assert (args.lr_scheduler_type, args.max_grad_norm, args.remove_unused_columns) == ("constant", 0.0, False)
    assert args.concept_type == "object" and args.retain_weight == 0.5
    assert make(tmp_path, concept_type="nudity").retain_weight == 0.3
    assert make(tmp_path, concept_type="style").retain_weight == 0.5
    assert make(tmp_path, concept_type="nudity", retain_weight=0.0).retain_weight == 0.0
    assert make(tmp_path, train_layers="3").train_layers == 3 and make(tmp_path, train_layers=2).train_layers == 2


def test_every_field_has_help_and_the_parser_reads_them(tmp_path):
    own = {field.name for field in dataclasses.fields(AdvUnlearnConfig)} - {
        field.name for field in dataclasses.fields(TrainingArguments)}
    assert own == {"eta", "num_adv_tokens", "adv_position", "attack_steps", "attack_lr", "attack_mode",
                   "attack_warmup", "attack_l2_bound", "retain_weight", "retain_batch", "train_layers", "ddim_steps",
                   "guidance_scale", "share_xt", "concept_type"}
    for field in dataclasses.fields(AdvUnlearnConfig):
        if field.name in own:
            assert field.metadata.get("help"), field.name
    (parsed,) = HfArgumentParser(AdvUnlearnConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--use_cpu", "--attack_mode", "sign", "--train_layers", "2",
         "--attack_l2_bound", "0.5", "--share_xt", "false", "--concept_type", "nudity"])
    assert (parsed.attack_mode, parsed.train_layers, parsed.attack_l2_bound) == ("sign", 2, 0.5)
    assert parsed.share_xt is False
    assert parsed.retain_weight == 0.3
    attack = parsed.attack_config(seed=3)
    assert (attack.attack_mode, attack.attack_l2_bound, attack.seed, attack.num_adv_tokens) == ("sign", 0.5, 3, 1)


@pytest.mark.parametrize(
    "field, value, allowed",
    [("concept_type", "weapon", "nudity"), ("eta", -1.0, ">="), ("eta", math.nan, ">="),
     ("num_adv_tokens", 0, ">= 1"), ("adv_position", "middle", "prefix"), ("attack_steps", -1, ">= 0"),
     ("attack_lr", 0.0, "> 0"), ("attack_mode", "pgd", "adam"), ("attack_warmup", -1, ">= 0"),
     ("attack_l2_bound", 0.0, "> 0"), ("retain_weight", -0.1, ">="), ("retain_batch", 0, ">= 1"),
     ("train_layers", 0, "'all'"), ("train_layers", "some", "'all'"), ("ddim_steps", 1, ">= 2"),
     ("guidance_scale", -1.0, ">="), ("share_xt", "yes", "True"), ("remove_unused_columns", True, "False")],
)
def test_bad_values_raise_naming_the_field_and_what_is_allowed(tmp_path, field, value, allowed):
    with pytest.raises(ValueError, match=re.escape(f"`{field}`")) as error:
        make(tmp_path, **{field: value})
    assert allowed in str(error.value)
