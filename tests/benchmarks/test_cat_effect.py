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
