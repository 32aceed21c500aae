import pytest

from hf_robust.cat.cat_config import CATConfig


def test_config_defaults_follow_the_paper(tmp_path):
    args = CATConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True)
    assert (args.adversarial_fraction, args.away_weight, args.toward_weight, args.utility_weight) == (
        0.125, 0.5, 0.5, 1.0)
    assert (args.away_cutoff, args.toward_cutoff) == (5.0, 0.5)
    attack = args.attack_config()
    assert (attack.eps, attack.eps_mode, attack.steps, attack.step_size, attack.optimizer, attack.init,
            attack.targeted) == (0.05, "relative", 10, 1e-4, "sign", "zero", True)


@pytest.mark.parametrize(
    "field, value",
    [("adversarial_fraction", 1.5), ("adversarial_fraction", -0.1), ("away_cutoff", 0.0), ("toward_cutoff", -1.0),
     ("away_weight", float("nan")), ("attack_eps", -1.0), ("attack_optimizer", "rms"), ("attack_steps", -2),
     ("mixing_stopping_strategy", "never"), ("packing", True)],
)
def test_config_rejects_bad_values_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        CATConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, **{field: value})
