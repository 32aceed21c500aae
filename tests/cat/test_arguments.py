"""`hf_robust.cat.arguments`: the attack fields shared by CATConfig and CAPOConfig."""

from hf_robust.cat import CATConfig


def config(tmp_path, **overrides):
    return CATConfig(**{"output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "report_to": "none", "seed": 5,
                        **overrides})


def test_a_uniform_start_without_attack_seed_is_seeded_per_call_and_process(tmp_path):
    uniform = config(tmp_path, attack_init="uniform")
    seeds = {uniform.attack_config_for_call(call, process).seed for call in (1, 2) for process in (0, 1)}
    assert None not in seeds and len(seeds) == 4  # fresh at every attack, on every process
    assert uniform.attack_config_for_call(2, 1) == config(tmp_path, attack_init="uniform").attack_config_for_call(2, 1)
    assert config(tmp_path, attack_init="uniform", seed=6).attack_config_for_call(2, 1).seed not in seeds


def test_a_zero_start_or_a_fixed_attack_seed_is_left_as_configured(tmp_path):
    zero = config(tmp_path)
    assert zero.attack_config_for_call(3, 0) == zero.attack_config()
    fixed = config(tmp_path, attack_init="uniform", attack_seed=11)
    assert fixed.attack_config_for_call(3, 0).seed == 11
