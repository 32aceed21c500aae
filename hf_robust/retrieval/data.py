"""The shipped real-text retrieval data: a corpus of Python Language Reference prose and one concept query set.

Both live in `hf_robust/retrieval/data/` (read through `importlib.resources`, so they work from an installed wheel);
provenance and licence are in `data/README.md`.

- `default_corpus()`: 734 passages (30-150 words each) of the Python Language Reference text that ships with CPython
  (`pydoc_data.topics`, PSF licence).
- `concept_queries(split)`: 60 hand-written user questions on the concept "exceptions" (handling errors in Python),
  frozen in a shuffled order; the first 30 are the `"attack"` split, the last 30 the `"held_out"` split.
- `DEFAULT_INFO`: the attacker's default message for that concept; on its own it ranks outside the top 10 of every
  query with all-MiniLM-L6-v2.
"""

import functools
import json
from importlib import resources

__all__ = ["DEFAULT_CONCEPT", "DEFAULT_INFO", "SPLITS", "concept_queries", "corpus_records", "default_corpus"]

SPLITS = ("attack", "held_out", "all")
_CONCEPT_FILE = "concept_exceptions.json"
_CORPUS_FILE = "corpus.jsonl"


def _read_text(name: str) -> str:
    return (resources.files(__package__) / "data" / name).read_text(encoding="utf-8")


@functools.cache
def _concept() -> dict:
    return json.loads(_read_text(_CONCEPT_FILE))


@functools.cache
def _records() -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in _read_text(_CORPUS_FILE).splitlines() if line.strip())


def corpus_records() -> list[dict]:
    """The shipped corpus with its metadata: a list of `{"id", "title", "text"}` dicts (fresh copies)."""
    return [dict(record) for record in _records()]


def default_corpus() -> list[str]:
    """The shipped corpus as passage texts, in file order (a fresh list)."""
    return [record["text"] for record in _records()]


def concept_queries(split: str = "attack") -> list[str]:
    """Queries of the shipped concept "exceptions".

    Args:
        split: `"attack"` (the first half: the attacker's target queries), `"held_out"` (the second half: unseen
            queries for evaluation) or `"all"` (both, attack first).

    Returns:
        A fresh list of query strings (30 for each half, 60 for `"all"`).

    Raises:
        ValueError: `split` is not one of `SPLITS`.
    """
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    queries = list(_concept()["queries"])
    half = len(queries) // 2
    return {"attack": queries[:half], "held_out": queries[half:], "all": queries}[split]


DEFAULT_CONCEPT: str = _concept()["concept"]
DEFAULT_INFO: str = _concept()["info"]
