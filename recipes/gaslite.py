"""GASLITE for `accelerate launch`: the same run as `hf-robust gaslite` (clusters are split across processes).

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml \
        recipes/gaslite.py --config recipes/gaslite_minilm.yaml
"""

from hf_robust.cli import parse_script_args
from hf_robust.retrieval.command import main, make_parser

if __name__ == "__main__":
    raise SystemExit(main(*parse_script_args(make_parser())))
