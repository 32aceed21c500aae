"""Shared by the tests of the offline builders."""

import torch


def state_dicts_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(first_state[name], second_state[name]) for name in first_state
    )
