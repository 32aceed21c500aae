"""Texts and questions shared by the metric tests, and the model's own loss to compare with."""

import torch

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Mix the flour and water.",
]
QUESTIONS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "a dog", "bread"], "answer": 0},
    {"question": "Which one is better?", "choices": ["the red one", "the blue one"], "answer": 1},
    {"question": "How do I bake bread?", "choices": ["Mix the flour", "Check the battery", "Yes"], "answer": 2},
]


def own_loss(model, ids, start=1):
    """The model's own `outputs.loss` on `ids` with labels from position `start` (-100 before it)."""
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[0, :start] = -100
    with torch.no_grad():
        return model(input_ids=input_ids, labels=labels).loss
