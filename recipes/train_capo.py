"""CAPO training for `accelerate launch`: the same run as `hf-robust capo`.

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \
        recipes/train_capo.py --config recipes/capo.yaml
"""

from hf_robust.cat.capo_command import main, make_parser
from hf_robust.cli import parse_script_args

if __name__ == "__main__":
    raise SystemExit(main(*parse_script_args(make_parser())))
