"""Token-search objectives shared by the attack tests: a GCG-style target loss, a retrieval similarity, a cheap exact
linear one (rows do not interact), a recorder of scored batches, and the fast settings of the batch step."""

import torch.nn.functional as F

BATCH = dict(n_iters=3, topk=8, n_candidates=24, n_top_candidates=0, step="batch", batch_size=64, seed=0)


class GCGFixedTarget:
    """Mean CE of `target` as the last len(target) tokens of the sequence (after prompt + suffix)."""

    def __init__(self, model, target):
        self.model = model
        self.target = target

    def loss_from_embeds(self, embeds):
        n = self.target.numel()
        logits = self.model(inputs_embeds=embeds, use_cache=False).logits[:, -n - 1 : -1].float()
        target = self.target.expand(embeds.shape[0], -1)
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)

    def loss_from_ids(self, ids):
        return self.loss_from_embeds(self.model.get_input_embeddings()(ids))


class SimilarityObjective:
    """Negated cosine similarity of the mean-pooled BERT passage embedding to a fixed target direction."""

    def __init__(self, st_model, target):
        self.encoder = st_model[0].auto_model
        self.target = F.normalize(target, dim=-1)

    def loss_from_embeds(self, embeds):
        hidden = self.encoder(inputs_embeds=embeds).last_hidden_state
        return -F.cosine_similarity(hidden.mean(dim=1), self.target, dim=-1)

    def loss_from_ids(self, ids):
        hidden = self.encoder(input_ids=ids).last_hidden_state
        return -F.cosine_similarity(hidden.mean(dim=1), self.target, dim=-1)


class Linear:
    """loss = sum of the embeddings at the optimised positions times fixed directions (cheap, exact)."""

    def __init__(self, weight, directions):
        self.weight, self.directions = weight.detach(), directions

    def loss_from_embeds(self, embeds):
        return (embeds * self.directions).sum((1, 2))

    def loss_from_ids(self, ids):
        return self.loss_from_embeds(self.weight[ids])


class Recording:
    """Wraps an objective and keeps every candidate batch scored by `loss_from_ids`."""

    def __init__(self, objective):
        self.objective = objective
        self.batches = []

    def loss_from_embeds(self, embeds):
        return self.objective.loss_from_embeds(embeds)

    def loss_from_ids(self, ids):
        self.batches.append(ids.clone())
        return self.objective.loss_from_ids(ids)


class DistanceToStart:
    """Squared distance of the embeddings to those of the start: the start is the unique minimum (loss 0)."""

    def __init__(self, weight, start):
        self.weight = weight.detach()
        self.reference = self.weight[start]

    def loss_from_embeds(self, embeds):
        return ((embeds.float() - self.reference) ** 2).sum(dim=(1, 2))

    def loss_from_ids(self, ids):
        return self.loss_from_embeds(self.weight[ids])
