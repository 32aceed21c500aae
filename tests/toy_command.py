"""A method-shaped subcommand used by tests/test_cli.py: `make_parser(prog)` + `main(*dataclasses)`."""

import json
import os
from dataclasses import dataclass, field

from trl import TrlParser


@dataclass
class ToyArguments:
    output: str = field(default="", metadata={"help": "where to write the parsed values (json)"})
    steps: int = field(default=1, metadata={"help": "a number that a flag or the yaml can set"})
    name: str = field(default="default", metadata={"help": "a string that a flag or the yaml can set"})

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"`steps` must be >= 0, got {self.steps}")


def make_parser(prog=None):
    return TrlParser(ToyArguments, prog=prog)


def main(arguments: ToyArguments) -> int:
    import torch.distributed

    from accelerate import PartialState

    state = PartialState(cpu=True)
    rank, world_size = state.process_index, state.num_processes
    with open(f"{arguments.output}.rank{rank}.json", "w") as handle:
        json.dump({"steps": arguments.steps, "name": arguments.name, "world_size": world_size}, handle)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    from hf_robust.cli import parse_script_args

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main(*parse_script_args(make_parser())))
