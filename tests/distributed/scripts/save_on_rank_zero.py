"""Report a result from rank 0 only, so the harness's missing-rank check can be tested.

No accelerate and no process group here: save_rank_result reads the rank from the launcher's environment.
"""

import os

from hf_robust.testing import save_rank_result

if __name__ == "__main__":
    if int(os.environ["RANK"]) == 0:
        save_rank_result({"only": "rank 0"})
