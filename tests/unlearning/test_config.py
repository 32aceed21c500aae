import dataclasses
import math
import re

import pytest

from hf_robust.unlearning import UnlearnConfig

REQUIRED = dict(use_cpu=True, report_to="none", save_strategy="no", bf16=False)


def make(tmp_path, **overrides):
    return UnlearnConfig(output_dir=str(tmp_path), **REQUIRED, **overrides)


def test_defaults_follow_the_papers(tmp_path):
    args = make(tmp_path)
    assert (args.method, args.smoothing, args.beta, args.retain_weight, args.retain_loss) == (
        "npo", "none", 0.1, 1.0, "nll")
    assert (args.rho, args.sam_target, args.rs_sigma, args.rs_samples) == (0.01, "forget", 1e-4, 3)
    assert (args.rmu_layer, args.rmu_steering_coeff, args.rmu_alpha, args.max_length) == (7, 6.5, 1200.0, 512)
    assert make(tmp_path, method="simnpo").beta == 4.5
    assert make(tmp_path, method="ga").beta is None
    assert make(tmp_path, method="simnpo", beta=2.0).beta == 2.0
    assert make(tmp_path).simnpo_delta == 0.0
    with pytest.raises(ValueError, match="`simnpo_delta`"):
        make(tmp_path, method="simnpo", simnpo_delta=float("nan"))


def test_every_unlearning_field_has_help():
    own = {field.name for field in dataclasses.fields(UnlearnConfig)} - {
        field.name for field in dataclasses.fields(UnlearnConfig.__mro__[1])}
    expected = {"method", "smoothing", "beta", "simnpo_delta", "retain_weight", "retain_loss", "rho", "sam_target",
                "rs_sigma", "rs_samples", "gp_coeff", "cr_coeff", "wa_start", "wa_every", "rmu_layer",
                "rmu_steering_coeff", "rmu_alpha", "rmu_param_regex", "max_length"}
    assert expected <= own
    for field in dataclasses.fields(UnlearnConfig):
        if field.name in expected:
            assert field.metadata.get("help"), field.name


@pytest.mark.parametrize(
    "field, value, allowed",
    [("method", "dpo", "graddiff"), ("smoothing", "swa", "sam"), ("retain_loss", "mse", "kl"),
     ("sam_target", "retain", "forget"), ("beta", 0.0, ">"), ("beta", math.nan, ">"), ("retain_weight", -1.0, ">="),
     ("rho", -0.1, ">="), ("rs_sigma", math.inf, ">="), ("rs_samples", 0, ">="), ("rs_samples", 2.5, "integer"),
     ("gp_coeff", -1.0, ">="), ("cr_coeff", -1.0, ">="), ("wa_start", -1, ">="), ("wa_every", 0, ">="),
     ("rmu_layer", -1, ">="), ("rmu_steering_coeff", 0.0, ">"), ("rmu_alpha", -2.0, ">="),
     ("rmu_param_regex", "(", "regular expression"), ("max_length", 1, ">=")],
)
def test_bad_values_raise_naming_the_field_and_what_is_allowed(tmp_path, field, value, allowed):
    with pytest.raises(ValueError, match=re.escape(f"`{field}`")) as error:
        make(tmp_path, **{field: value})
    assert allowed in str(error.value)


def test_default_rmu_parameters_are_the_down_projections_up_to_the_layer(tmp_path):
    pattern = re.compile(make(tmp_path, rmu_layer=1).parameter_regex())
    assert pattern.search("model.layers.0.mlp.down_proj.weight")
    assert pattern.search("model.layers.1.mlp.down_proj.weight")
    assert not pattern.search("model.layers.2.mlp.down_proj.weight")
    assert not pattern.search("model.layers.1.mlp.up_proj.weight")
    assert make(tmp_path, rmu_param_regex="q_proj").parameter_regex() == "q_proj"
