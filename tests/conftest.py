import os

# No test may touch the network: the Hugging Face Hub cannot be reached here, and every hub call would retry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
