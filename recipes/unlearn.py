"""Unlearning for `accelerate launch`: the same run as `hf-robust unlearn`.

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \
        recipes/unlearn.py --config recipes/unlearn_npo_sam.yaml
"""

from hf_robust.cli import parse_script_args
from hf_robust.unlearning.command import main, make_parser

if __name__ == "__main__":
    raise SystemExit(main(*parse_script_args(make_parser())))
