import os

import pytest

# No test may touch the network: the Hugging Face Hub cannot be reached here, and every hub call would retry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a 2-core machine more threads only contend (10x slower seen)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """A tiny Llama and its tokenizer saved as a local model folder, as the commands' --model_name_or_path takes."""
    from hf_robust.testing import tiny_causal_lm

    folder = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer = tiny_causal_lm("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
