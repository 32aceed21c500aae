import math

import torch
import torch.nn.functional as F

from hf_robust.unlearning.objectives import (
    activation_mse, global_norm, kl_to_reference, npo_loss, random_unit_vector, sequence_nll, simnpo_loss,
)


def test_sequence_nll_sums_the_shifted_cross_entropy_over_scored_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    labels = torch.tensor([[1, 2, 3, 4, 5], [6, 0, -100, -100, -100]])
    nll, tokens = sequence_nll(logits, labels)
    assert tokens.tolist() == [4, 1]
    for row in range(2):
        count = int(tokens[row])
        expected = F.cross_entropy(logits[row, :count], labels[row, 1:count + 1], reduction="sum")
        torch.testing.assert_close(nll[row], expected)


def test_npo_at_the_reference_is_2_ln2_over_beta_with_the_gradient_ascent_gradient():
    nll = torch.tensor([3.0, 5.0, 1.5], requires_grad=True)
    for beta in (0.1, 1.0):
        loss = npo_loss(nll, nll.detach().clone(), beta)
        torch.testing.assert_close(loss, torch.full((3,), 2 / beta * math.log(2)))
        (gradient,) = torch.autograd.grad(loss.sum(), nll)
        torch.testing.assert_close(gradient, -torch.ones(3))  # d(-NLL)/dNLL, GA's


def test_npo_is_bounded_below_and_decreases_as_the_nll_rises():
    reference = torch.zeros(4)
    values = npo_loss(torch.tensor([-1.0, 0.0, 10.0, 1000.0]), reference, 0.1)
    assert (values.diff() < 0).all() and (values >= 0).all()


def test_simnpo_is_length_normalised_and_reference_free():
    nll, tokens = torch.tensor([6.0, 12.0]), torch.tensor([2, 4])
    values = simnpo_loss(nll, tokens, beta=4.5)
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], -(2 / 4.5) * F.logsigmoid(torch.tensor(4.5 * 3.0)))
    torch.testing.assert_close(simnpo_loss(nll, tokens, 1.0, delta=3.0)[0], torch.tensor(2 * math.log(2)))


def test_kl_to_reference_is_zero_at_the_reference_and_the_masked_kl_otherwise():
    generator = torch.Generator().manual_seed(1)
    logits, reference = torch.randn(2, 4, 6, generator=generator), torch.randn(2, 4, 6, generator=generator)
    labels = torch.tensor([[0, 1, 2, 3], [0, 1, -100, -100]])
    assert torch.allclose(kl_to_reference(reference, reference, labels), torch.zeros(2), atol=1e-6)
    values = kl_to_reference(logits, reference, labels)
    p, q = F.log_softmax(logits, -1), F.log_softmax(reference, -1)
    per_position = F.kl_div(p, q, log_target=True, reduction="none").sum(-1)  # KL(q || p)
    torch.testing.assert_close(values, torch.stack([per_position[0, :3].sum(), per_position[1, :1].sum()]))


def test_activation_mse_masks_positions_and_averages_hidden_units():
    activations = torch.ones(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(activation_mse(activations, torch.zeros(4), mask), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(activation_mse(activations, activations, mask), torch.zeros(2))


def test_random_unit_vector_is_seeded_unit_and_positive():
    vector = random_unit_vector(16, seed=3)
    torch.testing.assert_close(vector.norm(), torch.tensor(1.0))
    assert (vector >= 0).all() and torch.equal(vector, random_unit_vector(16, seed=3))
    assert not torch.equal(vector, random_unit_vector(16, seed=4))


def test_global_norm_is_one_norm_over_all_tensors():
    tensors = [torch.tensor([3.0]), None, torch.tensor([[4.0, 0.0]], dtype=torch.bfloat16)]
    assert global_norm(tensors).dtype == torch.float32
    torch.testing.assert_close(global_norm(tensors), torch.tensor(5.0))
