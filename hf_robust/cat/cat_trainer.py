"""`CATTrainer`: continuous adversarial training (CAT, a.k.a. C-AdvUL) on trl's `SFTTrainer`.

Xhonneux et al. (2024), "Efficient Adversarial Training in LLMs with Continuous Attacks", arXiv 2405.15589.

Every step attacks the adversarial rows of the batch once in embedding space (the shared `embedding_attack`, which
never touches model state), then trains in ONE forward over [away rows; toward rows; utility rows]: away = the harmful
target on prompt + delta (pushed down), toward = the refusal on the same prompt + the same delta (pushed up), utility
= clean SFT rows. One forward per step keeps DDP to one forward and one backward per rank, whatever the batch mix.
"""

import torch
from datasets import Dataset
from trl import SFTTrainer

from ..attacks.continuous import IGNORE_INDEX, embedding_attack, embedding_hidden_size
from ..modeling import added_to_input_embeddings
from ..sharding import SHARDED_WEIGHT_ENGINES, engine_of
from .arguments import PAPER
from .cat_config import CATConfig
from .cat_data import FEATURES, CATDataCollator, check_adversarial_dataset, mix_rows, tokenize_adversarial


def away_term(cross_entropy: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Per-row away loss: -CE, or -cutoff - 0.001 CE once CE > cutoff (bounded, but its gradient never vanishes)."""
    return torch.where(cross_entropy > cutoff, -cutoff - 1e-3 * cross_entropy, -cross_entropy)


def toward_term(cross_entropy: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Per-row toward loss: CE, or cutoff + 0.001 CE once CE < cutoff (stop pushing a refusal that already holds)."""
    return torch.where(cross_entropy < cutoff, cutoff + 1e-3 * cross_entropy, cross_entropy)


def _align_perturbation(delta: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The away rows' delta moved onto other sequences of the same prompts, position by position.

    Args:
        delta: Tensor, shape (rows, away_seq, hidden).
        attention_mask, labels: Tensor, shape (rows, seq), of the receiving sequences.

    Returns:
        Tensor, shape (rows, seq, hidden): delta[:, t] at every attended non-target position t < away_seq, else 0.
        Prompts tokenised identically share their positions, so the same tokens get the same perturbation.
    """
    rows, length = labels.shape
    aligned = delta.new_zeros(rows, length, delta.shape[-1])
    common = min(length, delta.shape[1])
    aligned[:, :common] = delta[:, :common]
    perturbable = (attention_mask == 1) & (labels == IGNORE_INDEX)
    return torch.where(perturbable.unsqueeze(-1), aligned, 0.0)


def _pad_columns(tensor: torch.Tensor, length: int, value) -> torch.Tensor:
    if tensor.shape[1] >= length:
        return tensor[:, :length]
    padding = tensor.new_full((tensor.shape[0], length - tensor.shape[1], *tensor.shape[2:]), value)
    return torch.cat([tensor, padding], dim=1)


class CATTrainer(SFTTrainer):
    """trl `SFTTrainer` whose loss is the CAT (C-AdvUL) loss on a mix of adversarial and utility rows.

    Args:
        model: Model id/path, `PreTrainedModel` or `PeftModel` (as `SFTTrainer`).
        args: `CATConfig`.
        adversarial_dataset: `datasets.Dataset` with string columns `prompt` (the harmful request), `target` (the
            harmful affirmative response, e.g. "Sure, here is ...") and `refusal`. Chat formatting goes through
            `processing_class.apply_chat_template`.
        utility_dataset: `datasets.Dataset` in trl's conversational (`messages`) or prompt/completion format; prepared
            exactly as `SFTTrainer` prepares `train_dataset`. May be None only with `adversarial_fraction=1`.
        eval_dataset: Optional utility-format dataset(s); evaluated with the clean SFT loss.
        processing_class, callbacks, optimizers, peft_config: As in `SFTTrainer`.

    Each training row is adversarial with probability `args.adversarial_fraction` (`datasets.interleave_datasets`,
    seeded by `args.seed`). Adversarial rows whose harmful target or refusal is truncated away by `max_length` are
    dropped with a warning.
    """

    _tag_names = ["trl", "sft", "hf-robust", "cat"]
    _name = "CAT"
    _paper = PAPER
    # The loss is normalised by counts over the whole accumulation window (see `get_batch_samples`).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: CATConfig | None = None,
        adversarial_dataset: Dataset | None = None,
        utility_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            args = CATConfig("CAT")
        if not isinstance(args, CATConfig):
            raise TypeError(f"`args` must be a CATConfig, got {type(args).__name__}.")
        if args.adversarial_fraction > 0:
            check_adversarial_dataset(adversarial_dataset)
        if utility_dataset is None:
            if args.adversarial_fraction < 1:
                raise ValueError(
                    "`utility_dataset` is required when `adversarial_fraction` < 1 (got "
                    f"{args.adversarial_fraction}); pass trl conversational (`messages`) or prompt/completion data."
                )
        elif not isinstance(utility_dataset, Dataset):
            raise TypeError(f"`utility_dataset` must be a datasets.Dataset, got {type(utility_dataset).__name__}.")
        elif not ({"messages"} <= set(utility_dataset.column_names)
                  or {"prompt", "completion"} <= set(utility_dataset.column_names)):
            raise ValueError(
                "`utility_dataset` must be in trl's conversational format (a `messages` column) or prompt/completion "
                f"format (`prompt` and `completion` columns); got columns {utility_dataset.column_names}."
            )
        sft_dataset = utility_dataset
        if sft_dataset is None:
            # Only adversarial rows are trained; the refusals stand in for the dataset SFTTrainer insists on preparing.
            sft_dataset = adversarial_dataset.map(
                lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}],
                             "completion": [{"role": "assistant", "content": row["refusal"]}]},
                remove_columns=adversarial_dataset.column_names,
            )
        super().__init__(
            model=model,
            args=args,
            train_dataset=sft_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )
        self.attack, self._attacks_run = args.attack_config(), 0  # (the count seeds uniform starts)
        self.data_collator = CATDataCollator(pad_token_id=self._tokenizer.pad_token_id)
        self.train_dataset = self._mix(adversarial_dataset, self.train_dataset)
        self._window_counts = None

    def _mix(self, adversarial_dataset: Dataset | None, utility: Dataset) -> Dataset:
        args = self.args
        adversarial = None
        if args.adversarial_fraction > 0:
            adversarial = tokenize_adversarial(adversarial_dataset, self._tokenizer, args.max_length)
        return mix_rows(adversarial, utility, args.adversarial_fraction, args.seed, args.mixing_stopping_strategy)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(FEATURES)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count, over the whole accumulation window and all processes, the adversarial rows and the utility
        label tokens: the loss divides by these, so 1 micro-batch of 8 and 8 of 1 give the same gradient."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(2, dtype=torch.long, device=device)
        for batch in batch_samples:
            adversarial = batch["adversarial"].bool() if "adversarial" in batch else torch.zeros(
                batch["labels"].shape[0], dtype=torch.bool)
            counts[0] += int(adversarial.sum())
            counts[1] += int((batch["labels"][~adversarial][:, 1:] != IGNORE_INDEX).sum())
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(dim=0)
        self._window_counts = counts
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        adversarial = inputs.get("adversarial", torch.zeros(input_ids.shape[0], dtype=torch.bool)).bool()
        adversarial = adversarial.to(input_ids.device)
        unwrapped = self.accelerator.unwrap_model(model)
        hidden = embedding_hidden_size(unwrapped.get_input_embeddings())

        parts = []  # (ids, attention mask, labels, delta) per group, each (rows, seq[, hidden])
        n_adversarial = int(adversarial.sum())
        stats = torch.zeros(6, dtype=torch.float32, device=input_ids.device)
        if not n_adversarial and self._attack_on_every_rank(mode):
            # Another rank attacks in this micro-step: its forwards all-gather the sharded weights, so this rank
            # runs the same attack (on a placeholder row, result unused) to make the same collective calls.
            with torch.enable_grad():
                embedding_attack(unwrapped, *self._placeholder_row(input_ids.device), self.attack)
        if n_adversarial:
            away = [tensor[adversarial] for tensor in (input_ids, attention_mask, labels)]
            # The attack needs gradients w.r.t. delta also under evaluation's no_grad.
            with torch.enable_grad():
                self._attacks_run += 1
                attack = self.args.attack_config_for_call(self._attacks_run, self.accelerator.process_index)
                result = embedding_attack(unwrapped, *away, attack)
            toward = [inputs[f"refusal_{key}"][adversarial] for key in ("input_ids", "attention_mask", "labels")]
            parts.append((*away, result.delta))
            parts.append((*toward, _align_perturbation(result.delta, toward[1], toward[2])))
            perturbable = (away[1] == 1) & (away[2] == IGNORE_INDEX)
            norms = result.delta.norm(dim=-1)[perturbable]
            stats[:4] = torch.stack([
                result.final_loss.sum(), norms.sum(), torch.tensor(float(norms.numel())), result.success.float().sum()
            ]).to(stats)
        utility = ~adversarial
        n_utility = int(utility.sum())
        if n_utility:
            rows = [tensor[utility] for tensor in (input_ids, attention_mask, labels)]
            parts.append((*rows, torch.zeros(n_utility, 1, hidden, device=input_ids.device)))

        length = max(part[0].shape[1] for part in parts)
        ids = torch.cat([_pad_columns(part[0], length, self._tokenizer.pad_token_id) for part in parts])
        mask = torch.cat([_pad_columns(part[1], length, 0) for part in parts])
        all_labels = torch.cat([_pad_columns(part[2], length, IGNORE_INDEX) for part in parts])
        delta = torch.cat([_pad_columns(part[3], length, 0.0) for part in parts])
        # delta is float32 and constant, added by a hook inside the root forward (as sharded engines need): the
        # gradient reaches the embedding matrix through the embedding of `ids` as usual.
        with added_to_input_embeddings(unwrapped, delta) as applied:
            outputs = model(input_ids=ids, attention_mask=mask, labels=all_labels, fused_lm_head=True,
                            use_cache=False)
        if not applied:  # never train on clean inputs silently
            raise RuntimeError("CATTrainer: the forward did not go through `get_input_embeddings()`.")
        token_nll = -outputs.log_probs  # (rows, seq - 1), zero at ignored labels
        token_counts = outputs.label_mask.sum(dim=1)

        away_ce = token_nll[:n_adversarial].sum(dim=1) / token_counts[:n_adversarial].clamp_min(1)
        toward_ce = token_nll[n_adversarial:2 * n_adversarial].sum(dim=1) / token_counts[
            n_adversarial:2 * n_adversarial].clamp_min(1)
        away_rows = away_term(away_ce, self.args.away_cutoff)
        toward_rows = toward_term(toward_ce, self.args.toward_cutoff)
        utility_sum = token_nll[2 * n_adversarial:].sum()
        utility_tokens = token_counts[2 * n_adversarial:].sum()

        if mode == "train" and self._window_counts is not None:
            # Normalise by the window's global counts; DDP averages gradients over processes, hence the product.
            adversarial_rows, utility_count = self._window_counts.to(token_nll.device)
            scale = self.accelerator.num_processes
        else:
            adversarial_rows, utility_count, scale = torch.tensor(n_adversarial), utility_tokens, 1
        away_loss = away_rows.sum() / adversarial_rows.clamp_min(1) * scale
        toward_loss = toward_rows.sum() / adversarial_rows.clamp_min(1) * scale
        utility_loss = utility_sum / utility_count.clamp_min(1) * scale
        loss = (self.args.away_weight * away_loss + self.args.toward_weight * toward_loss
                + self.args.utility_weight * utility_loss)

        stats[4], stats[5] = n_adversarial, utility_tokens
        self._log_terms(mode, stats, away_rows.detach().sum(), toward_rows.detach().sum(), utility_sum.detach(),
                        away_ce.detach().sum())
        return (loss, outputs) if return_outputs else loss

    def _attack_on_every_rank(self, mode: str) -> bool:
        """Whether this micro-step's attack must run on every rank: the engine shards the weights (each forward is a
        collective) and some rank has adversarial rows in this accumulation window."""
        if mode != "train" or self._window_counts is None or int(self._window_counts[0]) == 0:
            return False
        return engine_of(self.accelerator) in SHARDED_WEIGHT_ENGINES

    def _placeholder_row(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A 2-token row whose second token is a target: the smallest valid input of the targeted attack."""
        pad = self._tokenizer.pad_token_id
        ids = torch.full((1, 2), pad, dtype=torch.long, device=device)
        return ids, torch.ones_like(ids), torch.tensor([[IGNORE_INDEX, pad]], device=device)

    def _log_terms(self, mode, stats, away_sum, toward_sum, utility_sum, away_ce_sum) -> None:
        """Gather sums and counts from every process (one collective, whatever each batch holds), log the means."""
        sums = torch.cat([stats, torch.stack([away_sum, toward_sum, utility_sum, away_ce_sum]).to(stats)])
        sums = self.accelerator.gather_for_metrics(sums.unsqueeze(0)).sum(dim=0).tolist()
        attack_loss, norm_sum, norm_count, successes, rows, utility_tokens, away, toward, utility, away_ce = sums
        metrics = self._metrics[mode]
        if rows:
            metrics["away_loss"].append(away / rows)
            metrics["away_cross_entropy"].append(away_ce / rows)
            metrics["toward_loss"].append(toward / rows)
            metrics["attack_loss"].append(attack_loss / rows)
            metrics["attack_success"].append(successes / rows)
            metrics["attack_delta_norm"].append(norm_sum / norm_count if norm_count else 0.0)
            metrics["adversarial_rows"].append(rows)
        if utility_tokens:
            metrics["utility_loss"].append(utility / utility_tokens)
