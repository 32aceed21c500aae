"""CAT training for `accelerate launch`: the same run as `hf-robust cat`.

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \
        recipes/train_cat.py --config recipes/cat.yaml
"""

from hf_robust.cat.cat_command import main, make_parser
from hf_robust.cli import parse_script_args

if __name__ == "__main__":
    raise SystemExit(main(*parse_script_args(make_parser())))
