import torch

from vitlab.engine.evaluate import scores_from_logits


def test_scores_from_a_hand_made_example():
    logits = torch.tensor([[5.0, 1, 0], [0, 4, 1], [0, 3, 2], [1, 0, 0]])
    labels = torch.tensor([0, 1, 2, 2])
    scores = scores_from_logits(logits, labels)
    assert scores.accuracy == 0.5
    assert scores.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert scores.per_class_accuracy == [1.0, 1.0, 0.0]
    assert scores.top5_accuracy is None  # with 3 classes every label is in the top 5
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(scores.loss - expected_loss) < 1e-6


def test_top5_counts_a_label_among_the_five_highest_logits():
    logits = torch.arange(7.0).repeat(3, 1)  # class 6 scores highest, class 0 lowest
    scores = scores_from_logits(logits, torch.tensor([6, 2, 1]))
    assert abs(scores.top5_accuracy - 2 / 3) < 1e-6  # classes 6 and 2 are in the top 5, class 1 is not
