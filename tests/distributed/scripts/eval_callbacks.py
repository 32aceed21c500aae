"""A stock Trainer on a tiny Llama with RobustnessEvalCallback and RelearningEvalCallback evaluating at the last step;
reports what each callback measured. Under FSDP2 / ZeRO-3 both run on the main process over a plain copy with the
gathered weights (the other ranks wait); 2 processes x 2 rows must measure what 1 process x 4 rows does.

Usage: eval_callbacks.py PER_DEVICE_BATCH_SIZE
"""

import sys
import tempfile

from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_robust.attacks.continuous import EmbeddingAttackConfig
from hf_robust.cat.robustness_callback import RobustnessEvalCallback
from hf_robust.cat.toy import toy_behaviours
from hf_robust.testing import finish_distributed, save_rank_result, tiny_causal_lm, training_arguments_for_engine
from hf_robust.unlearning.relearn import RelearnConfig
from hf_robust.unlearning.relearn_callback import RelearningEvalCallback

FORGET = ["The capital of France is Paris.", "The capital of Germany is Berlin.", "two plus two is four.",
          "Mix the flour and water, knead the dough.", "Check the battery and the engine oil.",
          "The quick brown fox jumps over the lazy dog."]
RETAIN = ["Hello! How can I help you today?", "Thank you very much!"]


def main(per_device_batch_size: int) -> None:
    model, tokenizer = tiny_causal_lm("llama", seed=0)
    rows = [tokenizer(text)["input_ids"][:8] for text in (FORGET + RETAIN)]
    train = Dataset.from_dict({"input_ids": [row + [tokenizer.pad_token_id] * (8 - len(row)) for row in rows]})
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, **training_arguments_for_engine(), max_steps=2, eval_strategy="steps",
            eval_steps=2, per_device_train_batch_size=per_device_batch_size, per_device_eval_batch_size=2,
            learning_rate=1e-3, optim="sgd", report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
            bf16=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=train.select(range(4)),
                          processing_class=tokenizer,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        robustness = RobustnessEvalCallback(
            trainer, toy_behaviours("test")[:2],
            EmbeddingAttackConfig(eps=1.0, steps=3, step_size=0.1, step_mode="relative", optimizer="l2"))
        relearning = RelearningEvalCallback(
            trainer, FORGET[:4], RETAIN, RelearnConfig(n_samples=2, steps=2, learning_rate=1e-3, batch_size=2,
                                                       max_length=16, parameters="all"),
            eval_forget=FORGET[4:], evaluation={"max_new_tokens": 2})
        trainer.add_callback(robustness)
        trainer.add_callback(relearning)
        trainer.train()
    result = relearning.history[-1]
    save_rank_result({"rates": {item.metric + ":" + item.attack: item.value for item in robustness.results},
                      "forget_nll": (result.before.forget_nll, result.after.forget_nll)})


if __name__ == "__main__":
    main(int(sys.argv[1]))
    finish_distributed()
