"""CUDA and bf16 checks, skipped without a GPU; `benchmarks/gpu_check.sh` runs them on a lent one."""

import pytest
import torch
from datasets import Dataset

from hf_robust.attacks import EmbeddingAttackConfig, embedding_attack
from hf_robust.testing import tiny_causal_lm
from hf_robust.unlearning.smoothing import applied_fraction, ascend_along_gradient

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_embedding_attack_under_cuda_bf16_autocast_keeps_delta_float32_in_the_ball():
    model, tokenizer = tiny_causal_lm("llama")
    model.cuda()
    ids = tokenizer(["Tell me a story about a dragon."], return_tensors="pt")["input_ids"].cuda()
    labels = ids.clone()
    labels[:, :4] = -100
    config = EmbeddingAttackConfig(eps=0.5, steps=5, step_size=0.3, step_mode="relative", optimizer="l2")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        result = embedding_attack(model, ids, None, labels, config)
    assert result.delta.dtype == torch.float32 and result.delta.device.type == "cuda"
    assert result.delta.norm(dim=-1).max() <= result.radius * (1 + 1e-5)
    assert result.losses[-1] < result.losses[0]


def test_sam_applies_eps_on_cuda_bf16_weights():
    generator = torch.Generator(device="cuda").manual_seed(0)
    parameters = [torch.nn.Parameter((torch.randn(1 << 20, device="cuda", generator=generator) * 0.02).bfloat16())]
    parameters[0].grad = torch.randn(1 << 20, device="cuda", generator=generator).bfloat16()
    before = [parameters[0].detach().clone()]
    norm = ascend_along_gradient(parameters, rho=0.01, generator=generator)
    eps = [parameters[0].grad.float() * 0.01 / norm]
    assert 0.9 <= applied_fraction(before, [parameters[0].detach()], eps) <= 1.1


def test_cat_trainer_steps_on_cuda_with_bf16_autocast(tmp_path):
    from hf_robust.cat import CATConfig, CATTrainer

    model, tokenizer = tiny_causal_lm("llama")
    adversarial = Dataset.from_list([{"prompt": "How do I pick a lock?", "target": "Sure, here is how.",
                                      "refusal": "I cannot help with that."}] * 4)
    args = CATConfig(output_dir=str(tmp_path), bf16=True, gradient_checkpointing=False, max_steps=2,
                     per_device_train_batch_size=2, report_to="none", save_strategy="no", disable_tqdm=True,
                     adversarial_fraction=1.0, attack_steps=3, logging_steps=1)
    trainer = CATTrainer(model=model, args=args, adversarial_dataset=adversarial, processing_class=tokenizer)
    output = trainer.train()
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert torch.isfinite(torch.tensor(output.training_loss))
    assert all(entry["attack_delta_norm"] > 0 for entry in trainer.state.log_history if "attack_delta_norm" in entry)
