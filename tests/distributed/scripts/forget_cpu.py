"""Set up accelerate without asking for CPU, which on a GPU-less machine leaves each rank believing it is alone.

save_rank_result must refuse to record such a run.
"""

from accelerate import PartialState

from hf_robust.testing import finish_distributed, save_rank_result

if __name__ == "__main__":
    state = PartialState()
    save_rank_result({"process_index": state.process_index, "num_processes": state.num_processes})
    finish_distributed()
