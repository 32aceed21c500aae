"""GASLITE's clusters in lockstep (`GasliteConfig.batch_clusters`): the same passages as one cluster after another,
every step's candidates of all clusters scored in one forward (chunked by batch_size)."""

from dataclasses import replace

import pytest
import torch

from hf_robust.retrieval import GasliteConfig, craft_poison_passages
from hf_robust.retrieval import gaslite as gaslite_module
from hf_robust.retrieval.clusters import ClusterObjective
from hf_robust.retrieval.objective import CentroidObjective, passage_layout, query_centroid
from hf_robust.testing import tiny_sentence_transformer

from .test_gaslite import FAST, INFO, QUERIES

# Early stop: with seeds 0-2 the three clusters stop at iterations 6, 5 and 5 (the first goes on alone).
EARLY_STOP = replace(FAST, n_iters=8, patience=2, min_delta=0.002)
# Equality tolerance of the objective histories: the batched forward may round differently from one cluster's
# forward (on CPU the tiny model gives the same floats, so this only matters on other hardware).
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def model():
    return tiny_sentence_transformer(seed=0)


def craft_both(model, config):
    alone = craft_poison_passages(model, QUERIES, INFO, 3, replace(config, batch_clusters=False))
    together = craft_poison_passages(model, QUERIES, INFO, 3, replace(config, batch_clusters=True))
    return alone, together


@pytest.mark.parametrize("config", [FAST, EARLY_STOP, replace(FAST, seed=5, batch_size=7)],
                         ids=["n_iters", "early_stop", "seed_5_chunks_of_7"])
def test_lockstep_equals_one_cluster_after_another(model, config):
    alone, together = craft_both(model, config)
    for one, other in zip(alone, together, strict=True):
        assert other.passage == one.passage and other.passage_history == one.passage_history
        assert torch.equal(other.trigger_ids, one.trigger_ids) and other.query_indices == one.query_indices
        assert (other.iterations, other.stop_reason) == (one.iterations, one.stop_reason)
        torch.testing.assert_close(torch.tensor(other.objective_history), torch.tensor(one.objective_history),
                                   rtol=0, atol=TOLERANCE)
        assert len(other.iteration_seconds) == other.iterations
    if config is EARLY_STOP:  # one cluster searches on after the others stopped
        assert [result.iterations for result in together] == [6, 5, 5]
        assert {result.stop_reason for result in together} == {"patience"}


def record_forwards(monkeypatch):
    """Record (objective, kind, rows) of every encoder forward of the search: "losses" (candidate scoring, no grad)
    or "gradient"."""
    calls, alive = [], []  # `alive` keeps every objective referenced, so no two share an id() after one is freed
    for name, kind in (("embed_from_ids", "losses"), ("embed_from_embeds", "gradient")):
        original = getattr(CentroidObjective, name)

        def wrapped(self, inputs, original=original, kind=kind):
            alive.append(self)
            calls.append((id(self), kind, inputs.shape[0]))
            return original(self, inputs)

        monkeypatch.setattr(CentroidObjective, name, wrapped)
    return calls


def test_one_scoring_forward_per_step_for_all_clusters(model, monkeypatch):
    """One cluster after another: one forward per cluster and step (batch_size >= each step's rows). In lockstep:
    the rows of all clusters still searching, ceil(total / batch_size) forwards, every step; the early-stopped
    clusters' rows drop out."""
    batch_size = 20  # 16 candidates per flipped position and 4 gradient rows per cluster: 3 clusters need chunks
    config = replace(EARLY_STOP, batch_size=batch_size)
    calls = record_forwards(monkeypatch)
    alone = craft_poison_passages(model, QUERIES, INFO, 3, replace(config, batch_clusters=False))
    per_cluster: dict[int, list[tuple[str, int]]] = {}
    for objective, kind, rows in calls:  # one CentroidObjective per cluster, in cluster order
        per_cluster.setdefault(objective, []).append((kind, rows))
    steps = list(per_cluster.values())
    assert len(steps) == 3 and all(rows <= batch_size for step in steps for _, rows in step)
    assert len({len(step) for step in steps}) > 1  # the clusters stopped after different numbers of steps
    calls.clear()
    together = craft_poison_passages(model, QUERIES, INFO, 3, replace(config, batch_clusters=True))
    assert [result.passage for result in together] == [result.passage for result in alone]
    assert len({objective for objective, _, _ in calls}) == 1  # one encoder for all the clusters
    expected = []
    for step in range(max(len(cluster) for cluster in steps)):  # the clusters' step-th requests, answered together
        for kind in ("losses", "gradient"):
            total = sum(cluster[step][1] for cluster in steps if step < len(cluster) and cluster[step][0] == kind)
            expected += [(kind, min(batch_size, total - start)) for start in range(0, total, batch_size)]
    assert [(kind, rows) for _, kind, rows in calls] == expected
    scoring = [rows for _, kind, rows in calls if kind == "losses"]
    assert max(scoring) == batch_size and len(scoring) < sum(kind == "losses" for step in steps for kind, _ in step)


def test_cluster_objective_scores_each_row_against_its_own_centroid(model):
    layout, features = passage_layout(model, INFO, "", 4, "suffix", "!")
    embeddings = model.encode(QUERIES, convert_to_tensor=True)
    objectives = [CentroidObjective(model, features, query_centroid(embeddings[part]), "cosine")
                  for part in ([0, 1, 2, 3], [4, 5], [6])]
    joint = ClusterObjective(objectives)
    ids = layout.ids.repeat(5, 1)
    ids[:, layout.positions[0]] = torch.tensor([10, 20, 30, 40, 50])  # ids of the tiny vocabulary
    problems = torch.tensor([2, 0, 0, 1, 2])
    with torch.no_grad():
        losses = joint.loss_from_ids(ids, problems)
        expected = torch.stack([objectives[p].loss_from_ids(ids[r : r + 1])[0] for r, p in enumerate(problems)])
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-6)
    embeds = model[0].auto_model.get_input_embeddings().weight.detach()[ids].requires_grad_(True)
    (gradient,) = torch.autograd.grad(joint.loss_from_embeds(embeds, problems).sum(), embeds)
    for row, problem in enumerate(problems.tolist()):
        alone = embeds.detach()[row : row + 1].requires_grad_(True)
        (expected_gradient,) = torch.autograd.grad(objectives[problem].loss_from_embeds(alone).sum(), alone)
        torch.testing.assert_close(gradient[row], expected_gradient[0], rtol=0, atol=1e-6)


def test_batch_clusters_default_and_errors(model, monkeypatch):
    assert GasliteConfig().batch_clusters is None
    assert not GasliteConfig().clusters_in_lockstep(model)  # None: off on CPU, where batching gains nothing
    assert GasliteConfig(batch_clusters=True).clusters_in_lockstep(model)
    cuda = type("CudaModel", (), {"device": torch.device("cuda", 0)})()
    assert GasliteConfig().clusters_in_lockstep(cuda) and not GasliteConfig(batch_clusters=False).clusters_in_lockstep(
        cuda)
    for value in (1, 0, "yes", "auto"):
        with pytest.raises(ValueError, match="`batch_clusters`"):
            GasliteConfig(batch_clusters=value)

    def refused(*args, **kwargs):
        raise AssertionError("lockstep used")

    monkeypatch.setattr(gaslite_module, "_lockstep_attacks", refused)
    craft_poison_passages(model, QUERIES, INFO, 2, replace(FAST, n_iters=1))  # None on CPU: one after another
    craft_poison_passages(model, QUERIES, INFO, 1, replace(FAST, n_iters=1, batch_clusters=True))  # one cluster
    with pytest.raises(AssertionError, match="lockstep used"):
        craft_poison_passages(model, QUERIES, INFO, 2, replace(FAST, n_iters=1, batch_clusters=True))
