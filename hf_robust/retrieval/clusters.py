"""k-means clusters of the target queries (one GASLITE passage per cluster), the objective that scores several
clusters' passages in one forward, and the process split under accelerate."""

import os
import warnings

import torch
from torch import Tensor

from .objective import CentroidObjective, centroid_similarity


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


class ClusterObjective:
    """The `JointObjective` (`hf_robust.attacks.lockstep`) of GASLITE's clusters: one encoder forward for the rows of
    every cluster, then each row's negated similarity to its own cluster's centroid.

    Args:
        objectives: One `CentroidObjective` per cluster (index = the `problems` value of its rows), all of the same
            model and passage features (the same layout: only the centroids differ).
    """

    def __init__(self, objectives: list[CentroidObjective]):
        self.objectives = objectives
        self.encoder = objectives[0]  # the shared model and passage features

    def _losses(self, embeddings: Tensor, problems: Tensor) -> Tensor:
        # Each cluster's rows are compared with its centroid exactly as its own CentroidObjective does, so the only
        # difference from scoring the clusters one by one is the batched forward.
        losses = embeddings.new_zeros(embeddings.shape[0], dtype=torch.float32)
        for problem in problems.unique().tolist():
            rows = (problems == problem).nonzero().flatten()
            objective = self.objectives[problem]
            similarity = centroid_similarity(embeddings[rows], objective.centroid, objective.similarity)
            losses = losses.index_put((rows,), -similarity)
        return losses

    def loss_from_ids(self, input_ids: Tensor, problems: Tensor) -> Tensor:
        """input_ids (batch, seq), problems (batch,) -> negated similarity to each row's centroid (batch,)."""
        return self._losses(self.encoder.embed_from_ids(input_ids), problems)

    def loss_from_embeds(self, inputs_embeds: Tensor, problems: Tensor) -> Tensor:
        """inputs_embeds (batch, seq, hidden), problems (batch,) -> negated similarity (batch,), differentiable."""
        return self._losses(self.encoder.embed_from_embeds(inputs_embeds), problems)


def _process_state() -> tuple[int, int]:
    """(process index, number of processes) under `accelerate launch`; (0, 1) in a plain process, where accelerate's
    state is left uninitialised (initialising it here could clash with a later `Accelerator(cpu=True)`)."""
    from accelerate import PartialState

    if not PartialState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    state = PartialState()
    return state.process_index, state.num_processes
