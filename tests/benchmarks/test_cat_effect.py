"""`benchmarks/cat_effect.py`: its arguments are checked before any model loads."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cat_effect  # noqa: E402


def test_smollm2_refuses_an_evaluation_preset_it_would_not_use(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cat_effect.py", "--model", "smollm2", "--eval-preset", "train"])
    monkeypatch.setattr(cat_effect, "smollm2", lambda options: pytest.fail("ran with an ignored --eval-preset"))
    with pytest.raises(SystemExit):
        cat_effect.main()
    error = capsys.readouterr().err
    assert "--eval-preset 'train'" in error and "only 'strong' is allowed" in error


@pytest.mark.parametrize(("arguments", "message"), [
    (["--model", "smollm2", "--paper-mix", "--data-mix", "paper-refusals"], "contradicts --data-mix paper-refusals"),
    (["--model", "tiny", "--data-mix", "control-rows"], "--model tiny has the toy task's mix"),
    (["--model", "tiny", "--attack-init", "uniform"], "--model tiny has the toy task's training attack"),
    (["--model", "tiny", "--attack-step-size", "0.03"], "--model tiny has the toy task's training attack"),
    (["--model", "smollm2", "--attack-step-size", "0"], "--attack-step-size must be > 0, got 0.0"),
    (["--model", "smollm2", "--attack-step-size", "nan"], "--attack-step-size must be > 0, got nan"),
])
def test_data_mixes_that_contradict_or_do_not_apply_are_refused(monkeypatch, capsys, arguments, message):
    monkeypatch.setattr(sys, "argv", ["cat_effect.py", *arguments])
    for name in ("smollm2", "tiny"):
        monkeypatch.setattr(cat_effect, name, lambda options: pytest.fail("ran with a contradicting mix"))
    with pytest.raises(SystemExit):
        cat_effect.main()
    assert message in capsys.readouterr().err


def test_data_mix_paper_is_the_paper_mix_flag(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "argv", ["cat_effect.py", "--model", "smollm2", "--data-mix", "paper"])
    monkeypatch.setattr(cat_effect, "smollm2", seen.append)
    monkeypatch.setattr("torch.set_num_threads", lambda threads: None)  # the test process keeps its threads
    monkeypatch.setattr(sys.stdout, "reconfigure", lambda **kwargs: None, raising=False)
    cat_effect.main()
    assert seen[0].paper_mix and seen[0].data_mix == "paper"


def test_every_data_mix_of_the_benchmark_is_a_choice_of_the_command(monkeypatch):
    import cat_real

    seen = []
    monkeypatch.setattr(cat_effect, "smollm2", seen.append)
    monkeypatch.setattr("torch.set_num_threads", lambda threads: None)
    monkeypatch.setattr(sys.stdout, "reconfigure", lambda **kwargs: None, raising=False)
    for mix in cat_real.DATA_MIXES:
        monkeypatch.setattr(sys, "argv", ["cat_effect.py", "--model", "smollm2", "--data-mix", mix])
        cat_effect.main()
    assert [options.data_mix for options in seen] == list(cat_real.DATA_MIXES)
