import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import pytest

from hf_robust import cli

REPO = Path(__file__).resolve().parents[1]
# A launcher that registers the toy method command, as a method package's __init__ would.
LAUNCHER = (
    "import sys; from hf_robust.cli import register_command, main; "
    "register_command('toy', 'tests.toy_command', 'a toy method'); sys.exit(main())"
)


def run_cli(*args, timeout=300):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def toy_command():
    cli.register_command("toy", "tests.toy_command", "a toy method")
    yield
    cli._COMMANDS.pop("toy")


def read_results(prefix):
    return [json.loads(path.read_text()) for path in sorted(prefix.parent.glob(prefix.name + ".rank*.json"))]


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in ("env", "demo", "toy"):
        assert name in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "hf-robust"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "env" in result.stdout and "demo" in result.stdout


def test_unknown_command_names_the_allowed_ones():
    result = run_cli("no-such-command")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr and "env" in result.stderr


def test_env_prints_versions(capsys):
    assert cli.main(["env"]) == 0
    printed = capsys.readouterr().out
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "diffusers"):
        assert f"- {package}" in printed
    assert "sentence-transformers" in printed and "huggingface_hub" in printed
    assert "Accelerators" in printed and "Processes" in printed
    from importlib.metadata import version

    assert version("transformers") in printed


def test_config_file_sets_values_and_flags_override(tmp_path, toy_command):
    config = tmp_path / "toy.yaml"
    config.write_text("steps: 7\nname: from-yaml\n")
    output = tmp_path / "out"
    assert cli.main(["toy", "--config", str(config), "--name", "from-flag", "--output", str(output)]) == 0
    (result,) = read_results(output)
    assert result == {"steps": 7, "name": "from-flag", "world_size": 1}


def test_bad_value_is_rejected_before_running(tmp_path, toy_command):
    output = tmp_path / "out"
    with pytest.raises(ValueError, match="steps"):
        cli.main(["toy", "--steps", "-1", "--output", str(output)])
    assert read_results(output) == []


def test_unknown_yaml_key_and_unknown_flag_are_rejected(tmp_path, toy_command):
    config = tmp_path / "toy.yaml"
    config.write_text("stepz: 7\n")
    with pytest.raises(ValueError, match="stepz"):
        cli.main(["toy", "--config", str(config), "--output", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="--num_processes"):
        cli.main(["toy", "--num_processes", "2", "--output", str(tmp_path / "out")])


def test_accelerate_config_relaunches_through_accelerate(tmp_path, toy_command):
    output = tmp_path / "out"
    with mock.patch("accelerate.commands.launch.launch_command") as launch:
        cli.main(["toy", "--steps", "3", "--accelerate_config", "cpu_ddp", "--num_processes", "3",
                  "--output", str(output)])
    (arguments,) = launch.call_args.args
    assert Path(arguments.config_file).name == "cpu_ddp.yaml"
    assert arguments.num_processes == 3
    assert arguments.module and arguments.training_script == "tests.toy_command"
    assert arguments.training_script_args == ["--steps", "3", "--output", str(output)]
    assert read_results(output) == []  # nothing ran in this process


def test_accelerate_config_from_yaml(tmp_path, toy_command):
    config = tmp_path / "toy.yaml"
    config.write_text("steps: 2\naccelerate_config: multi_gpu\n")
    with mock.patch("accelerate.commands.launch.launch_command") as launch:
        cli.main(["toy", "--config", str(config), "--output", str(tmp_path / "out")])
    (arguments,) = launch.call_args.args
    assert Path(arguments.config_file).name == "multi_gpu.yaml"
    assert arguments.training_script_args == ["--config", str(config), "--output", str(tmp_path / "out")]


def test_fsdp2_config_on_cpu_warns_that_accelerate_runs_ddp(tmp_path, toy_command):
    with mock.patch("accelerate.commands.launch.launch_command"), mock.patch("torch.cuda.is_available", lambda: False):
        with pytest.warns(UserWarning, match="FSDP on CPU processes: accelerate runs plain DDP"):
            cli.main(["toy", "--accelerate_config", "fsdp2", "--output", str(tmp_path / "out")])
    with mock.patch("accelerate.commands.launch.launch_command"), mock.patch("torch.cuda.is_available", lambda: True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # on GPUs: no warning
            cli.main(["toy", "--accelerate_config", "fsdp2", "--output", str(tmp_path / "out")])


def test_bad_accelerate_config_names_the_shipped_ones(tmp_path, toy_command):
    with pytest.raises(ValueError, match="cpu_ddp"):
        cli.main(["toy", "--accelerate_config", "zero9", "--output", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="accelerate_config"):
        cli.main(["toy", "--output", str(tmp_path / "out"), "--accelerate_config"])


def test_shipped_accelerate_configs():
    assert set(cli.accelerate_config_names()) >= {
        "multi_gpu",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "fsdp2",
        "cpu_ddp",
    }
    recipes = REPO / "recipes" / "accelerate_configs"
    assert (recipes / "cpu_ddp.yaml").is_file()


def test_register_command_rejects_bad_names():
    with pytest.raises(ValueError, match="name"):
        cli.register_command("env", "tests.toy_command", "clash with a built-in")
    with pytest.raises(ValueError, match="name"):
        cli.register_command("two words", "tests.toy_command", "not an identifier")
    with pytest.raises(ValueError, match="module"):
        cli.register_command("ok", "", "no module")


@pytest.mark.distributed
def test_relaunch_really_runs_two_processes(tmp_path):
    output = tmp_path / "out"
    config = tmp_path / "toy.yaml"
    config.write_text("steps: 5\n")
    result = run_cli("toy", "--config", str(config), "--accelerate_config", "cpu_ddp", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(output)
    assert [entry["world_size"] for entry in results] == [2, 2]
    assert all(entry["steps"] == 5 for entry in results)
