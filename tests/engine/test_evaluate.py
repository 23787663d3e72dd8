import torch

from vitlab.engine.evaluate import scores_from_logits


def test_scores_from_a_hand_made_example():
    logits = torch.tensor([[5.0, 1, 0], [0, 4, 1], [0, 3, 2], [1, 0, 0]])
    labels = torch.tensor([0, 1, 2, 2])
    scores = scores_from_logits(logits, labels)
    assert scores.accuracy == 0.5
    assert scores.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert scores.per_class_accuracy == [1.0, 1.0, 0.0]
    assert scores.top5_accuracy == 1.0  # k is capped at the number of classes
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(scores.loss - expected_loss) < 1e-6
