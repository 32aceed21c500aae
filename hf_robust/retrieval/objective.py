"""The GASLITE objective on a sentence-transformer: passage layout, query centroid and centroid similarity.

`check_model` and `target_embeddings` validate the retriever and encode the target queries; `encoded_similarity`
re-encodes passages as an index would, to check the tracked objective.

The passage is tokenised once as `[CLS] + prompt + info + trigger (L tokens) + [SEP]` (the model's own special tokens
and document prompt, never padded), and `CentroidObjective` scores batches of such sequences, differing only in the
trigger tokens, through all the modules of the sentence-transformer (transformer, pooling, normalisation...):

- `loss_from_embeds(inputs_embeds)`: the model's features with `inputs_embeds` instead of `input_ids` (the gradient
  path of `token_search`); sentence-transformers passes `inputs_embeds` through to the Hugging Face encoder.
- `loss_from_ids(input_ids)`: the same features with the candidate ids.

Both return the NEGATED similarity of the passage embedding f(P) to the centroid c = mean_i(q_i / ||q_i||) of the
target query embeddings, in the model's similarity: cosine -> cos(f(P), c) (= mean_i cos(f(P), q_i) / ||c||),
dot -> f(P) . c (= mean_i f(P) . q_i / ||q_i||).
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling import eval_mode
from .prompts import resolve_prompt

SIMILARITIES = ("cosine", "dot")
TRIGGER_POSITIONS = ("prefix", "suffix", "middle", "trigger_only")
_FINAL_PUNCTUATION = tuple(".!?;:")


def with_full_stop(info: str) -> str:
    """`info` stripped, with a "." appended unless it already ends with punctuation (as GASLITE does)."""
    info = info.strip()
    return info if not info or info.endswith(_FINAL_PUNCTUATION) else info + "."


def query_centroid(query_embeddings: Tensor) -> Tensor:
    """The mean of the L2-normalised target query embeddings.

    Args:
        query_embeddings: Tensor, shape (n, dim) (n target queries) or (dim,) (one query or a given centroid).

    Returns:
        Tensor, shape (dim,), float32, on the input's device. Not normalised: ||c|| <= 1.
    """
    embeddings = query_embeddings.detach().float()
    if embeddings.dim() == 1:
        embeddings = embeddings.unsqueeze(0)
    return F.normalize(embeddings, dim=-1).mean(dim=0)


def centroid_similarity(embeddings: Tensor, centroid: Tensor, similarity: str) -> Tensor:
    """Similarity of passage embeddings to the centroid: Tensor (batch, dim), (dim,) -> Tensor (batch,), float32."""
    embeddings = embeddings.float()
    if similarity == "cosine":
        return F.cosine_similarity(embeddings, centroid.unsqueeze(0), dim=-1)
    return embeddings @ centroid


@dataclass
class PassageLayout:
    """Where the trigger sits in the tokenised passage, and how trigger ids become the passage text.

    Attributes:
        tokenizer: The model's tokenizer.
        prompt: The document prompt string prepended by the model ("" if none).
        before: Passage text before the trigger (the info for "suffix", its first half for "middle", else "").
        after: Passage text after the trigger (the info for "prefix", its second half for "middle", else "").
        ids: LongTensor, shape (seq,). Token ids of `prompt + passage`, special tokens included, unpadded.
        positions: LongTensor, shape (L,). The trigger positions in `ids` (consecutive).
    """

    tokenizer: Any
    prompt: str
    before: str
    after: str
    ids: Tensor
    positions: Tensor

    def passage(self, trigger_ids: Tensor | list[int]) -> str:
        """The passage text (without the prompt) for trigger ids (L,): pieces joined by single spaces."""
        trigger_ids = trigger_ids.tolist() if isinstance(trigger_ids, Tensor) else list(trigger_ids)
        trigger = self.tokenizer.decode(trigger_ids).strip()
        return " ".join(piece for piece in (self.before, trigger, self.after) if piece)

    def round_trip(self, ids: Tensor) -> bool:
        """True when `tokenizer(prompt + passage(ids[positions]))` gives exactly `ids` (seq,), the rule of the search.

        Hence the trigger still has L tokens, and the text around it is unchanged.
        """
        ids = ids.detach().cpu()
        text = self.prompt + self.passage(ids[self.positions.cpu()])
        return self.tokenizer(text).input_ids == ids.tolist()


def _trigger_ids(tokenizer: Any, trigger_init: str, length: int) -> list[int]:
    """`trigger_init` tokenised: one token is repeated `length` times; several are cut, or padded with "!", to
    `length`."""
    tokens = tokenizer(trigger_init, add_special_tokens=False).input_ids
    if len(tokens) == 1:
        return tokens * length
    pad = tokenizer("!", add_special_tokens=False).input_ids[:1]
    return (tokens + pad * length)[:length]


def passage_layout(model: Any, info: str, prompt: str, trigger_len: int, trigger_position: str,
                   trigger_init: str) -> tuple[PassageLayout, dict]:
    """Tokenise the initial passage once and locate its trigger.

    Args:
        model: SentenceTransformer (its tokenizer, `preprocess` and `max_seq_length` are used).
        info: The attacker's text (a "." is appended if it lacks final punctuation); unused for "trigger_only".
        prompt: The document prompt string ("" for none).
        trigger_len, trigger_position, trigger_init: See `GasliteConfig`.

    Returns:
        (layout, features): the `PassageLayout`, and the model's features of the initial passage (the output of
        `model.preprocess([passage], prompt=prompt)`: tensors of shape (1, seq), plus e.g. `prompt_length`).

    Raises:
        ValueError: the passage exceeds `model.max_seq_length` tokens, or its tokens do not split into the text
            before the trigger and `trigger_len` trigger tokens (a `trigger_init` that merges with its neighbours).
    """
    tokenizer = model.tokenizer
    info = with_full_stop(info)
    if trigger_position == "suffix":
        before, after = info, ""
    elif trigger_position == "prefix":
        before, after = "", info
    elif trigger_position == "middle":
        words = info.split()
        before, after = " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])
    else:
        before, after = "", ""
    trigger = _trigger_ids(tokenizer, trigger_init, trigger_len)
    layout = PassageLayout(tokenizer, prompt, before, after, torch.empty(0, dtype=torch.long),
                           torch.empty(0, dtype=torch.long))
    passage = layout.passage(trigger)
    ids = tokenizer(prompt + passage).input_ids
    maximum = getattr(model, "max_seq_length", None)
    if maximum is not None and len(ids) > maximum:
        raise ValueError(
            f"The passage (document prompt {prompt!r} + `info` + `trigger_len`={trigger_len} trigger tokens) has "
            f"{len(ids)} tokens, more than the model's max_seq_length {maximum}: shorten `info` or `trigger_len`."
        )
    plain = tokenizer(prompt + passage, add_special_tokens=False).input_ids
    head = tokenizer((prompt + before).rstrip(), add_special_tokens=False).input_ids if prompt + before else []
    leading = next((k for k in range(len(ids) - len(plain) + 1) if ids[k : k + len(plain)] == plain), None)
    if leading is None or plain[: len(head)] != head or plain[len(head) : len(head) + trigger_len] != trigger:
        raise ValueError(
            f"The initial passage {passage!r} does not tokenise into the text before the trigger followed by the "
            f"`trigger_len`={trigger_len} tokens of `trigger_init`={trigger_init!r}; choose another `trigger_init`."
        )
    start = leading + len(head)
    features = model.preprocess([passage], prompt=prompt or None)
    if features["input_ids"][0].tolist() != ids:
        raise ValueError("The model's preprocessing does not give the tokenizer's ids for the passage.")
    layout.ids = torch.tensor(ids, dtype=torch.long)
    layout.positions = torch.arange(start, start + trigger_len)
    return layout, features


class CentroidObjective:
    """The `TokenObjective` of GASLITE: negated similarity of the passage embedding to the query centroid.

    Args:
        model: SentenceTransformer, in eval mode while scored.
        features: The model's features of the initial passage (tensors of shape (1, seq), see `passage_layout`);
            every batch reuses them with its own `input_ids` or `inputs_embeds`.
        centroid: Tensor, shape (dim,). See `query_centroid`.
        similarity: "cosine" or "dot".
    """

    def __init__(self, model: Any, features: dict, centroid: Tensor, similarity: str):
        self.model = model
        device = model.device
        self.features = {
            key: value.to(device) if isinstance(value, Tensor) else value
            for key, value in features.items() if key != "input_ids"
        }
        self.centroid = centroid.to(device)
        self.similarity = similarity

    def _batch(self, rows: int, **inputs: Tensor) -> dict:
        features = {
            key: value.expand(rows, -1) if isinstance(value, Tensor) and value.dim() == 2 else value
            for key, value in self.features.items()
        }
        return {**features, **inputs}

    def embed_from_embeds(self, inputs_embeds: Tensor) -> Tensor:
        """inputs_embeds: (batch, seq, hidden) -> passage embeddings (batch, dim)."""
        return self.model(self._batch(inputs_embeds.shape[0], inputs_embeds=inputs_embeds))["sentence_embedding"]

    def embed_from_ids(self, input_ids: Tensor) -> Tensor:
        """input_ids: (batch, seq) -> passage embeddings (batch, dim)."""
        return self.model(self._batch(input_ids.shape[0], input_ids=input_ids))["sentence_embedding"]

    def similarity_from_ids(self, input_ids: Tensor) -> Tensor:
        """input_ids: (batch, seq) -> similarity to the centroid (batch,), float32."""
        return centroid_similarity(self.embed_from_ids(input_ids), self.centroid, self.similarity)

    def loss_from_embeds(self, inputs_embeds: Tensor) -> Tensor:
        """inputs_embeds: (batch, seq, hidden) -> negated similarity (batch,)."""
        return -centroid_similarity(self.embed_from_embeds(inputs_embeds), self.centroid, self.similarity)

    def loss_from_ids(self, input_ids: Tensor) -> Tensor:
        """input_ids: (batch, seq) -> negated similarity (batch,)."""
        return -self.similarity_from_ids(input_ids)


def check_model(model: Any) -> str:
    """Raise unless `model` is a SentenceTransformer with a cosine or dot similarity; return that similarity."""
    from sentence_transformers import SentenceTransformer

    if not isinstance(model, SentenceTransformer):
        raise TypeError(f"`model` must be a sentence_transformers.SentenceTransformer, got {type(model).__name__}.")
    similarity = model.similarity_fn_name or "cosine"
    if similarity not in SIMILARITIES:
        raise ValueError(f"The model's similarity_fn_name must be one of {SIMILARITIES}, got {similarity!r}.")
    return similarity


def target_embeddings(model: Any, queries: list[str] | Tensor, query_prompt: str | None = None) -> Tensor:
    """The target query embeddings: Tensor (n, dim), float32, on the model's device.

    `queries` is a non-empty list of strings, encoded with the prompt `query_prompt(model, query_prompt)` (None: the
    model's own query prompt), or a Tensor of already computed embeddings, shape (n, dim), or (dim,) for one query or
    a given centroid (`query_prompt` unused).
    """
    if isinstance(queries, Tensor):
        embeddings = queries.unsqueeze(0) if queries.dim() == 1 else queries
        dimension = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
        if embeddings.dim() != 2 or embeddings.shape[0] == 0 or not embeddings.dtype.is_floating_point or (
            dimension is not None and embeddings.shape[1] != dimension
        ):
            raise ValueError(
                f"`queries` as a Tensor must be floating embeddings of shape (n, {dimension}) or ({dimension},) with "
                f"n >= 1, got {queries.dtype} {tuple(queries.shape)}."
            )
        if not torch.isfinite(embeddings).all() or (embeddings.norm(dim=-1) == 0).any():
            raise ValueError("`queries` embeddings must be finite and non-zero.")
        return embeddings.detach().float().to(model.device)
    if not isinstance(queries, (list, tuple)) or not all(isinstance(query, str) for query in queries):
        raise TypeError(f"`queries` must be a list of str or a Tensor of embeddings, got {type(queries).__name__}.")
    if not queries or not all(query.strip() for query in queries):
        raise ValueError("`queries` must be a non-empty list of non-blank strings.")
    with torch.no_grad(), eval_mode(model):  # encode switches to eval mode; restore the caller's flags
        embeddings = model.encode(list(queries), prompt=resolve_prompt(model, "query", query_prompt),
                                  convert_to_tensor=True, show_progress_bar=False)
    return embeddings.float().to(model.device)


def encoded_similarity(model: Any, passages: list[str], queries: list[str] | Tensor, *,
                       document_prompt: str | None = None, query_prompt: str | None = None) -> Tensor:
    """Similarity of freshly encoded passages to the centroid of `queries`: Tensor (n_passages,).

    Passages are encoded with `document_prompt(model, document_prompt)`, queries with `query_prompt(model,
    query_prompt)` (None: the model's own), as the attack scores them.
    """
    centroid = query_centroid(target_embeddings(model, queries, query_prompt))
    with torch.no_grad(), eval_mode(model):
        embeddings = model.encode(list(passages), prompt=resolve_prompt(model, "document", document_prompt),
                                  convert_to_tensor=True, show_progress_bar=False)
    return centroid_similarity(embeddings.to(centroid.device), centroid, check_model(model)).cpu()
