import pytest
import torch
from datasets import Dataset

from hf_robust.attacks.continuous import IGNORE_INDEX
from hf_robust.cat.cat_data import CATDataCollator
from hf_robust.cat.cat_trainer import CATTrainer
from hf_robust.testing import tiny_causal_lm
from hf_robust.testing.chat_rows import ADVERSARIAL_ROWS, adversarial_dataset, utility_dataset

from .cat_rows import config, make_trainer


def test_bad_datasets_are_rejected_with_the_argument_named(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    args = config(tmp_path)
    cases = [
        (dict(adversarial_dataset=Dataset.from_list([{"prompt": "a", "target": "b"}])), ValueError, "refusal"),
        (dict(adversarial_dataset=ADVERSARIAL_ROWS), TypeError, "adversarial_dataset"),
        (dict(adversarial_dataset=Dataset.from_list([{**ADVERSARIAL_ROWS[0], "target": ""}])), ValueError, "row 0"),
        (dict(utility_dataset=Dataset.from_list([{"text": "hello"}])), ValueError, "utility_dataset"),
        (dict(utility_dataset=None), ValueError, "utility_dataset"),
    ]
    for overrides, error, message in cases:
        kwargs = dict(adversarial_dataset=adversarial_dataset(), utility_dataset=utility_dataset()) | overrides
        with pytest.raises(error, match=message):
            CATTrainer(model=model, args=args, processing_class=tokenizer, **kwargs)
    with pytest.raises(TypeError, match="CATConfig"):
        CATTrainer(model=model, args=object(), adversarial_dataset=adversarial_dataset(),
                   utility_dataset=utility_dataset(), processing_class=tokenizer)


def test_adversarial_rows_hold_the_chat_prompt_and_exact_targets(tmp_path):
    trainer = make_trainer(tmp_path, adversarial_fraction=1.0)
    tokenizer = trainer.processing_class
    rows = list(trainer.train_dataset)
    assert len(rows) == len(ADVERSARIAL_ROWS) and all(row["adversarial"] for row in rows)
    for row, source in zip(rows, ADVERSARIAL_ROWS):
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": source["prompt"]}],
                                                   add_generation_prompt=True, return_dict=True)["input_ids"]
        for prefix, completion in (("", source["target"]), ("refusal_", source["refusal"])):
            ids, labels = row[f"{prefix}input_ids"], row[f"{prefix}labels"]
            assert ids[: len(prompt_ids)] == list(prompt_ids)
            assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
            completion_text = tokenizer.decode(labels[len(prompt_ids):])
            assert completion_text.startswith(completion)  # then the template's end of turn
    assert any(0 in row["labels"] for row in rows)  # token id 0 ("!") sits inside a target


def test_truncated_targets_are_dropped_with_a_warning(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    lengths = [len(tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                                 add_generation_prompt=True, return_dict=True)["input_ids"])
               for row in ADVERSARIAL_ROWS]
    max_length = sorted(lengths)[1] + 1  # leaves the two shortest prompts one target token
    with pytest.warns(UserWarning, match="dropped 2 of 4") as caught:
        trainer = CATTrainer(model=model, args=config(tmp_path, adversarial_fraction=1.0, max_length=max_length),
                             adversarial_dataset=adversarial_dataset(), utility_dataset=utility_dataset(),
                             processing_class=tokenizer)
    dropped = [warning for warning in caught if "dropped" in str(warning.message)]
    assert dropped[0].filename == __file__  # the warning points at the CATTrainer(...) call
    assert len(trainer.train_dataset) == 2
    batch = trainer.data_collator(list(trainer.train_dataset))
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss)


def test_mixing_follows_the_adversarial_fraction(tmp_path):
    model, tokenizer = tiny_causal_lm("llama")
    trainer = CATTrainer(model=model,
                         args=config(tmp_path, adversarial_fraction=0.25, mixing_stopping_strategy="all_exhausted"),
                         adversarial_dataset=adversarial_dataset(10), utility_dataset=utility_dataset(30),
                         processing_class=tokenizer)
    flags = [row["adversarial"] for row in trainer.train_dataset]
    assert 0.15 < sum(flags) / len(flags) < 0.35
    assert sum(flags) >= 40 and len(flags) - sum(flags) >= 120  # all_exhausted: every row of both datasets is used


def test_the_collator_pads_to_the_right_and_gives_utility_rows_empty_refusals():
    collate = CATDataCollator(pad_token_id=7)
    batch = collate([
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3], "refusal_input_ids": [1, 4],
         "refusal_labels": [IGNORE_INDEX, 4], "adversarial": True},
        {"input_ids": [5], "labels": [5], "refusal_input_ids": [], "refusal_labels": [], "adversarial": False},
    ])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [5, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["refusal_input_ids"].tolist() == [[1, 4], [7, 7]]
    assert batch["refusal_attention_mask"].tolist() == [[1, 1], [0, 0]]
    assert batch["refusal_labels"].tolist() == [[IGNORE_INDEX, 4], [IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["adversarial"].tolist() == [True, False]
    # A batch of utility rows alone still gives the refusal tensors one (padding) column.
    alone = collate([{"input_ids": [5], "labels": [5]}])
    assert alone["refusal_input_ids"].shape == (1, 1) and alone["refusal_attention_mask"].tolist() == [[0]]
