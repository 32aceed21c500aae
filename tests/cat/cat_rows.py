"""Configs and trainers shared by the CAT trainer's tests (`test_cat_data.py`, `test_cat_trainer.py`)."""

from peft import LoraConfig

from hf_robust.cat.cat_config import CATConfig
from hf_robust.cat.cat_trainer import CATTrainer
from hf_robust.testing import tiny_causal_lm
from hf_robust.testing.chat_rows import adversarial_dataset, utility_dataset


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", disable_tqdm=True, max_length=64, seed=0, per_device_train_batch_size=4, max_steps=1,
        attack_eps=0.5, attack_step_mode="relative", attack_step_size=0.2, attack_steps=3, logging_steps=1,
    )
    values.update(overrides)
    return CATConfig(**values)


def make_trainer(tmp_path, arch="llama", peft=False, model=None, **overrides):
    if model is None:
        model, tokenizer = tiny_causal_lm(arch)
    else:
        model, tokenizer = model
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if peft else None
    return CATTrainer(
        model=model, args=config(tmp_path, **overrides), adversarial_dataset=adversarial_dataset(),
        utility_dataset=utility_dataset(), processing_class=tokenizer, peft_config=peft_config,
    )
