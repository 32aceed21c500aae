"""Report this process's rank and world size as accelerate sees them."""

from accelerate import PartialState

from hf_robust.testing import finish_distributed, save_rank_result

if __name__ == "__main__":
    state = PartialState(cpu=True)
    save_rank_result({"process_index": state.process_index, "num_processes": state.num_processes})
    finish_distributed()
