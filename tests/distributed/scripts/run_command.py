"""Run an `hf-robust` method command on every launched rank, as `accelerate launch recipes/<method>.py` does, with the
CPU settings of the launched engine; report which engine ran and what the main process wrote.

Usage: run_command.py MODULE OUTPUT_DIR ARGUMENTS...   (MODULE: e.g. hf_robust.unlearning.command)
"""

import importlib
import json
import os
import sys

from hf_robust.cli import parse_script_args
from hf_robust.testing import finish_distributed, save_rank_result, training_arguments_for_engine


def main(module_name: str, output_dir: str, arguments: list[str]) -> None:
    module = importlib.import_module(module_name)
    parser = module.make_parser()
    # The engine's CPU settings, where the command takes them (GASLITE has no Trainer: only `--use_cpu`).
    engine_flags = [item for key, value in training_arguments_for_engine().items()
                    if f"--{key}" in parser._option_string_actions for item in (f"--{key}", str(value).lower())]
    parsed = parse_script_args(parser, ["--output_dir", output_dir, *arguments, *engine_flags])
    module.main(*parsed)  # ends with barrier -> destroy_process_group
    robustness = os.path.join(output_dir, "robustness.json")
    save_rank_result({
        "files": sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else [],
        "robustness": json.load(open(robustness)) if os.path.isfile(robustness) else None,
    })


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
    finish_distributed()
