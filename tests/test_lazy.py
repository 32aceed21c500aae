import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hf_robust
from hf_robust.lazy import lazy_exports

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["hf_robust", "hf_robust.attacks", "hf_robust.cat", "hf_robust.erasure", "hf_robust.retrieval",
            "hf_robust.unlearning"]
HEAVY = ["torch", "transformers", "trl", "peft", "accelerate", "diffusers", "sentence_transformers", "datasets"]


def test_import_and_help_load_no_heavy_library():
    code = ("import json, sys, hf_robust, hf_robust.cli; "
            f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_import_registers_every_method_command():
    code = "import json, hf_robust; from hf_robust import cli; print(json.dumps(sorted(cli._COMMANDS)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["advunlearn", "capo", "cat", "eval", "gaslite", "unlearn"]


@pytest.mark.parametrize("package_name", PACKAGES)
def test_every_exported_name_resolves_to_its_definition(package_name):
    package = importlib.import_module(package_name)
    assert len(package.__all__) == len(set(package.__all__))
    for name in package.__all__:
        value = getattr(package, name)
        assert name in dir(package)
        if hasattr(value, "__module__") and isinstance(value, type):
            assert getattr(importlib.import_module(value.__module__), name) is value


def test_top_level_names_are_the_method_packages_objects():
    assert hf_robust.GasliteConfig is hf_robust.retrieval.GasliteConfig
    assert hf_robust.token_search is hf_robust.attacks.discrete.token_search
    assert hf_robust.hub.RobustnessResult is hf_robust.RobustnessResult  # a submodule name imports the submodule


def test_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'hf_robust' has no attribute 'not_a_name'"):
        hf_robust.not_a_name
    with pytest.raises(AttributeError, match="'hf_robust.retrieval' has no attribute 'GasliteConfg'"):
        hf_robust.retrieval.GasliteConfg
    assert not hasattr(hf_robust, "_private_missing")


def test_lazy_exports_imports_on_first_use_and_caches(monkeypatch):
    module = type(sys)("lazy_probe")
    monkeypatch.setitem(sys.modules, "lazy_probe", module)
    module.__getattr__, module.__dir__, module.__all__ = lazy_exports("lazy_probe", {"json": ["dumps", "loads"]})
    assert module.__all__ == ["dumps", "loads"]
    assert "dumps" not in vars(module)
    assert module.dumps is json.dumps
    assert vars(module)["dumps"] is json.dumps
    assert {"dumps", "loads"} <= set(dir(module))
