"""k-means clusters of the target queries (one GASLITE passage per cluster) and the process split under accelerate."""

import os
import warnings

import torch
from torch import Tensor


def cluster_queries(embeddings: Tensor, n_clusters: int, seed: int) -> list[list[int]]:
    """k-means (scikit-learn) on the L2-normalised query embeddings: one list of query indices per cluster.

    Args:
        embeddings: Tensor, shape (n, dim).
        n_clusters: 1 <= n_clusters <= n; 1 gives one cluster of every query (no k-means).
        seed: `random_state` of `KMeans`.

    Returns:
        `n_clusters` non-empty, disjoint lists of ascending indices covering 0..n-1, ordered by their smallest index,
        so the same input and seed give the same clusters in the same order on every process.
    """
    if n_clusters == 1:
        return [list(range(embeddings.shape[0]))]
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    points = torch.nn.functional.normalize(embeddings.detach().double().cpu(), dim=-1).numpy()
    with warnings.catch_warnings():  # too few distinct points: sklearn warns, the check below raises
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit_predict(points).tolist()
    clusters: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        clusters.setdefault(label, []).append(index)
    if len(clusters) != n_clusters:
        raise ValueError(f"k-means found {len(clusters)} distinct clusters, fewer than `n_passages`={n_clusters} "
                         "(duplicate queries?).")
    return list(clusters.values())


def _process_state() -> tuple[int, int]:
    """(process index, number of processes) under `accelerate launch`; (0, 1) in a plain process, where accelerate's
    state is left uninitialised (initialising it here could clash with a later `Accelerator(cpu=True)`)."""
    from accelerate import PartialState

    if not PartialState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    state = PartialState()
    return state.process_index, state.num_processes
