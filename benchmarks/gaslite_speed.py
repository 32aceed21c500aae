"""GASLITE search speed on all-MiniLM-L6-v2: our scoring path against the reference's naive one, side by side.

    python benchmarks/gaslite_speed.py                      # 2 timed iterations per path, then nothing else
    python benchmarks/gaslite_speed.py --full               # also one whole default passage (L=30, 100 iterations)
    python benchmarks/gaslite_speed.py --device cuda --full
    python benchmarks/gaslite_speed.py --gradient           # only the averaged gradient: one-hot form vs Gram form
    python benchmarks/gaslite_speed.py --device cuda --batch_clusters 5   # 5 clusters: one after another vs lockstep

Both paths run the same shared token search (`hf_robust.attacks.token_search`) with `GasliteConfig()` settings
(L = 30, n_grad 50, top-k 256, 128 candidates at each of 20 flipped positions) on the shipped concept's attack queries
and the default info; only the objective differs:

- default: candidates scored unpadded (the passage's own length) in one batched forward per flipped position, the
  round-trip rule checked lazily on the candidate about to be accepted;
- naive (the reference implementation's way): every sequence padded to 512 tokens (gradient rows and candidates),
  one batched forward per flipped position, and the decode/re-encode round trip checked eagerly on every candidate
  before scoring (failures are dropped).

`--gradient` times the averaged GASLITE gradient alone (n_grad 50 rows, L = 30) in two forms, alternately: the
one-hot form of the reference (X (rows, L, V) with grad, embeds = X @ E, backward to X, each (row, position) row of
dloss/dX normalised over V, averaged) and the library's Gram form (backward to the embeddings only, norms from
G M G^T with M = E^T E (hidden x hidden), one (L, hidden) x (hidden, V) product); it reports seconds per gradient and
whether the top-256 tokens per position agree.

`--batch_clusters K` times `craft_poison_passages` with K passages (k-means clusters), `--iterations` iterations each
(no early stop), with `GasliteConfig(batch_clusters=False)` (one cluster after another) and `batch_clusters=True`
(lockstep: each step scores the candidates of all clusters in one forward, chunked by `--batch_size`, default
K x 128 so that a step is one forward); it reports seconds and whether both modes give the same passages.

Reported per path: candidate rows scored per second (rows given to the scoring forward / time spent in it) and
seconds per iteration (gradient + candidates). Target (issue 6): >= 5x the naive path's rows per second; one L=30,
100-iteration passage in < 10 min on 2 CPU cores (`--full` runs it). Prints tables; asserts nothing.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PADDED_LENGTH = 512


class Counted:
    """Wraps an objective: counts the candidate rows scored and the seconds spent scoring them."""

    def __init__(self, objective):
        self.objective, self.rows, self.seconds = objective, 0, 0.0

    def loss_from_embeds(self, inputs_embeds):
        return self.objective.loss_from_embeds(inputs_embeds)

    def loss_from_ids(self, input_ids):
        started = time.perf_counter()
        loss = self.objective.loss_from_ids(input_ids)
        self.seconds += time.perf_counter() - started
        self.rows += input_ids.shape[0]
        return loss


class NaiveObjective:
    """The reference's scoring: padding to 512, eager round trip of every candidate (failures score +inf)."""

    def __init__(self, objective, layout, tokenizer, embedding_matrix):
        self.objective, self.layout, self.tokenizer = objective, layout, tokenizer
        self.embedding_matrix = embedding_matrix

    def _mask(self, rows, length, device):
        import torch

        mask = torch.zeros(rows, PADDED_LENGTH, dtype=torch.long, device=device)
        mask[:, :length] = 1
        return mask

    def _embedding(self, inputs_embeds, mask):
        batch = self.objective._batch(inputs_embeds.shape[0], inputs_embeds=inputs_embeds)
        batch["attention_mask"] = mask
        if "token_type_ids" in batch:
            batch["token_type_ids"] = batch["token_type_ids"].new_zeros(mask.shape)
        return self.objective.model(batch)["sentence_embedding"]

    def loss_from_embeds(self, inputs_embeds):
        import torch

        rows, length, hidden = inputs_embeds.shape
        pad = self.embedding_matrix[self.tokenizer.pad_token_id].detach()
        padded = torch.cat([inputs_embeds, pad.expand(rows, PADDED_LENGTH - length, hidden)], dim=1)
        embedding = self._embedding(padded, self._mask(rows, length, inputs_embeds.device))
        from hf_robust.retrieval.objective import centroid_similarity

        return -centroid_similarity(embedding, self.objective.centroid, self.objective.similarity)

    def loss_from_ids(self, input_ids):
        import torch

        rows, length = input_ids.shape
        # Eager round trip: decode and re-encode (padded to 512) every candidate, as the reference does.
        positions = self.layout.positions.to(input_ids.device)
        texts = [self.layout.prompt + self.layout.passage(row[positions]) for row in input_ids]
        encoded = self.tokenizer(texts, padding="max_length", max_length=PADDED_LENGTH, truncation=True,
                                 return_tensors="pt")
        kept = (encoded["input_ids"][:, :length].to(input_ids.device) == input_ids).all(dim=1)
        kept &= encoded["attention_mask"].sum(dim=1).to(input_ids.device) == length
        padded = torch.full((rows, PADDED_LENGTH), self.tokenizer.pad_token_id, dtype=torch.long,
                            device=input_ids.device)
        padded[:, :length] = input_ids
        embedding = self._embedding(self.embedding_matrix[padded], self._mask(rows, length, input_ids.device))
        loss = -self._similarity(embedding)
        return torch.where(kept, loss, torch.full_like(loss, float("inf")))

    def _similarity(self, embedding):
        from hf_robust.retrieval.objective import centroid_similarity

        return centroid_similarity(embedding, self.objective.centroid, self.objective.similarity)


def search(model, queries, info, config, iterations, naive: bool):
    """Run `iterations` of the GASLITE search on one path; returns (seconds, rows scored, seconds scoring,
    similarity)."""
    from hf_robust.attacks import eval_mode
    from hf_robust.attacks.discrete import allowed_token_mask, token_search
    from hf_robust.retrieval.gaslite import check_model, document_prompt, target_embeddings
    from hf_robust.retrieval.objective import CentroidObjective, passage_layout, query_centroid

    similarity = check_model(model)
    layout, features = passage_layout(model, info, document_prompt(model), config.trigger_len,
                                      config.trigger_position, config.trigger_init)
    centroid = query_centroid(target_embeddings(model, queries))
    weight = model[0].auto_model.get_input_embeddings().weight
    allowed = allowed_token_mask(model.tokenizer, num_embeddings=weight.shape[0])
    objective = CentroidObjective(model, features, centroid, similarity)
    if naive:
        objective = NaiveObjective(objective, layout, model.tokenizer, weight)
    counted = Counted(objective)
    settings = config.search_config()
    settings.n_iters, settings.patience = iterations, 0  # exactly `iterations` timed iterations
    started = time.perf_counter()
    with eval_mode(model):
        result = token_search(counted, layout.ids, layout.positions, weight, allowed, settings,
                              round_trip=None if naive else layout.round_trip)
    return time.perf_counter() - started, counted.rows, counted.seconds, -result.loss


def one_hot_scores(objective, ids, positions, weight, allowed_ids, n_grad, batch_size, generator):
    """The reference implementation's averaged gradient: Tensor (L, V), float32 (higher = better token)."""
    import torch

    weight = weight.detach()
    length, vocab = positions.shape[0], weight.shape[0]
    rows = ids.unsqueeze(0).repeat(n_grad, 1)
    at = torch.randint(length, (n_grad - 1,), generator=generator)
    token = allowed_ids[torch.randint(allowed_ids.numel(), (n_grad - 1,), generator=generator)]
    rows[torch.arange(1, n_grad), positions[at]] = token
    total = torch.zeros(length, vocab)
    for chunk in rows.split(batch_size):
        one_hot = torch.zeros(chunk.shape[0], length, vocab, dtype=weight.dtype)
        one_hot.scatter_(2, chunk[:, positions].unsqueeze(-1), 1.0)
        one_hot.requires_grad_(True)
        embeds = weight[chunk].clone()
        embeds[:, positions] = one_hot @ weight
        (grad,) = torch.autograd.grad(objective.loss_from_embeds(embeds).sum(), one_hot)
        grad = grad.float()
        total += (grad / grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)).sum(0)
    return -total / n_grad


def gradient_forms(model, queries, info, repeats):
    """Seconds per averaged gradient, one-hot form and Gram form alternately, and top-256 agreement."""
    import torch

    from hf_robust.attacks import eval_mode
    from hf_robust.attacks.discrete import _token_scores, allowed_token_mask, gram_matrix
    from hf_robust.retrieval.gaslite import GasliteConfig, check_model, document_prompt, target_embeddings
    from hf_robust.retrieval.objective import CentroidObjective, passage_layout, query_centroid

    config = GasliteConfig()
    layout, features = passage_layout(model, info, document_prompt(model), config.trigger_len,
                                      config.trigger_position, config.trigger_init)
    objective = CentroidObjective(model, features, query_centroid(target_embeddings(model, queries)),
                                  check_model(model))
    weight = model[0].auto_model.get_input_embeddings().weight
    allowed = allowed_token_mask(model.tokenizer, num_embeddings=weight.shape[0])
    allowed_ids = allowed.nonzero().flatten()
    settings = config.search_config()
    ids, positions = layout.ids.to(weight.device), layout.positions.to(weight.device)
    times = {"one-hot": [], "Gram": []}
    started = time.perf_counter()
    gram = gram_matrix(weight)
    gram_seconds = time.perf_counter() - started
    agree, max_difference = [], 0.0
    with eval_mode(model):
        for repeat in range(repeats):
            started = time.perf_counter()
            reference = one_hot_scores(objective, ids, positions, weight, allowed_ids.to(weight.device),
                                       settings.n_grad, settings.batch_size, torch.Generator().manual_seed(repeat))
            times["one-hot"].append(time.perf_counter() - started)
            started = time.perf_counter()
            scores = _token_scores(objective, ids, positions, weight, allowed_ids, settings,
                                   torch.Generator().manual_seed(repeat), gram)
            times["Gram"].append(time.perf_counter() - started)
            top = [value.masked_fill(~allowed.to(value.device), -float("inf")).topk(settings.topk, dim=-1).indices
                   for value in (reference, scores)]
            cut = settings.n_top_candidates
            same_sets = [set(a[:cut].tolist()) == set(b[:cut].tolist()) and set(a.tolist()) == set(b.tolist())
                         for a, b in zip(*top)]
            agree.append((bool(torch.equal(top[0], top[1])), sum(same_sets), len(same_sets)))
            max_difference = max(max_difference, float((reference - scores).abs().max()))
    return times, gram_seconds, agree, max_difference


def cluster_modes(model, queries, info, n_passages, iterations, batch_size):
    """craft_poison_passages one cluster after another, then in lockstep: {lockstep: (seconds, results)}."""
    from dataclasses import replace

    from hf_robust.retrieval.gaslite import GasliteConfig, craft_poison_passages

    config = GasliteConfig(progress=False, n_iters=iterations, patience=0, batch_size=batch_size)
    craft_poison_passages(model, queries, info, 2, replace(config, n_iters=1, batch_clusters=True))  # warm-up
    timed = {}
    for lockstep in (False, True):
        started = time.perf_counter()
        results = craft_poison_passages(model, queries, info, n_passages, replace(config, batch_clusters=lockstep))
        timed[lockstep] = (time.perf_counter() - started, results)
    return timed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n_flip", type=int, default=20,
                        help="flipped positions per timed iteration, both paths (fewer keeps the naive path short)")
    parser.add_argument("--full", action="store_true", help="also time one whole default passage (100 iterations)")
    parser.add_argument("--gradient", action="store_true",
                        help="only time the averaged gradient, one-hot form against Gram form")
    parser.add_argument("--repeats", type=int, default=3, help="--gradient: gradients timed per form")
    parser.add_argument("--batch_clusters", type=int, default=0, metavar="K",
                        help="only time K clusters (passages) one after another against in lockstep")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="--batch_clusters: rows per forward (default K x 128: one forward per step)")
    options = parser.parse_args(argv)
    import torch

    from hf_robust.retrieval.data import DEFAULT_INFO, concept_queries
    from hf_robust.retrieval.gaslite import GasliteConfig, gaslite_attack
    from hf_robust.testing import load_minilm

    torch.set_num_threads(options.threads)
    model = load_minilm(device=options.device)
    queries = concept_queries("attack")
    if options.batch_clusters:
        k = options.batch_clusters
        batch_size = options.batch_size or k * 128
        timed = cluster_modes(model, queries, DEFAULT_INFO, k, options.iterations, batch_size)
        print(f"all-MiniLM-L6-v2 on {options.device}, {options.threads} thread(s); craft_poison_passages with {k} "
              f"clusters, GasliteConfig() settings, {options.iterations} iterations each, batch_size {batch_size}")
        print("| clusters | s | s / iteration (all clusters) |")
        print("|---|---|---|")
        for lockstep, (seconds, _) in timed.items():
            print(f"| {'in lockstep' if lockstep else 'one after another'} | {seconds:.1f} | "
                  f"{seconds / options.iterations:.2f} |")
        alone, together = timed[False][1], timed[True][1]
        same = sum(one.passage == other.passage for one, other in zip(alone, together))
        difference = max(abs(a - b) for one, other in zip(alone, together)
                         for a, b in zip(one.objective_history, other.objective_history))
        print(f"\nspeed-up {timed[False][0] / timed[True][0]:.2f}x; same passage in {same}/{k} clusters; max "
              f"|objective history difference| {difference:.1e}")
        return
    if options.gradient:
        import os
        import statistics

        times, gram_seconds, agree, difference = gradient_forms(model, queries, DEFAULT_INFO, options.repeats)
        print(f"all-MiniLM-L6-v2 on {options.device}, {options.threads} thread(s), load average "
              f"{os.getloadavg()[0]:.1f}; averaged gradient of GasliteConfig() (n_grad 50, L = 30, V = "
              f"{model.tokenizer.vocab_size}), {options.repeats} per form, alternating")
        print("| form | s / gradient (median) | all |")
        print("|---|---|---|")
        for form, values in times.items():
            print(f"| {form} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
        print(f"\nspeed-up {statistics.median(times['one-hot']) / statistics.median(times['Gram']):.2f}x; Gram matrix "
              f"E^T E built once per search in {gram_seconds:.2f} s; max |score difference| {difference:.1e}; "
              f"top-256 per position identical in order in {sum(a[0] for a in agree)}/{len(agree)} gradients; "
              f"positions with the same top-64 set and the same top-256 set (the candidate pools): "
              f"{sum(a[1] for a in agree)}/{sum(a[2] for a in agree)}")
        return
    config = GasliteConfig(progress=False)
    timed_config = GasliteConfig(progress=False, n_flip=options.n_flip)
    search(model, queries, DEFAULT_INFO, config, 1, naive=False)  # warm-up
    rows = []
    for naive in (False, True):
        seconds, scored, scoring, similarity = search(model, queries, DEFAULT_INFO, timed_config, options.iterations,
                                                      naive)
        rows.append(("naive (pad 512, eager round trip)" if naive else "default (unpadded, lazy round trip)",
                     scored / scoring, seconds / options.iterations, scored, similarity))
    print(f"all-MiniLM-L6-v2 on {options.device}, {options.threads} thread(s); GasliteConfig() settings with n_flip "
          f"{options.n_flip}, L = {config.trigger_len}; {options.iterations} iterations per path")
    print("| path | candidate rows / s | s / iteration | rows scored | similarity reached |")
    print("|---|---|---|---|---|")
    for label, rate, per_iteration, scored, similarity in rows:
        print(f"| {label} | {rate:.1f} | {per_iteration:.2f} | {scored} | {similarity:.4f} |")
    print(f"\nspeed-up in candidate rows / s: {rows[0][1] / rows[1][1]:.1f}x (target >= 5x); per iteration: "
          f"{rows[1][2] / rows[0][2]:.1f}x")
    if options.full:
        result = gaslite_attack(model, queries, DEFAULT_INFO, config)
        print(f"\none default passage: {result.iterations} iterations ({result.stop_reason}) in "
              f"{result.seconds:.0f} s ({result.seconds / 60:.1f} min; target < 10 min on 2 CPU cores), similarity "
              f"{result.objective_history[0]:.4f} -> {result.objective:.4f}")
    else:
        print("(run --full to time a whole default passage)")


if __name__ == "__main__":
    main()
