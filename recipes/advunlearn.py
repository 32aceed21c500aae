"""AdvUnlearn concept erasure for `accelerate launch`: the same run as `hf-robust advunlearn`.

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \
        recipes/advunlearn.py --config recipes/advunlearn_sd15.yaml
"""

from hf_robust.cli import parse_script_args
from hf_robust.erasure.command import main, make_parser

if __name__ == "__main__":
    raise SystemExit(main(*parse_script_args(make_parser())))
