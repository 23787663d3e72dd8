from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitlab.engine.train import EpochStats
from vitlab.report.tensorboard import TensorBoardLogger


def test_epoch_metrics_become_tensorboard_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    assert logger.enabled
    for epoch, accuracy in ((1, 0.5), (2, 0.75)):
        logger.on_epoch(EpochStats(epoch, 1.0 / epoch, accuracy, 0.9 / epoch, accuracy - 0.1, 1e-3, 3.0, 900.0))
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    test_accuracy = events.Scalars("accuracy/test")
    assert [(e.step, round(e.value, 4)) for e in test_accuracy] == [(1, 0.4), (2, 0.65)]
    assert {"loss/train", "loss/test", "accuracy/train", "lr", "images_per_second"} <= set(events.Tags()["scalars"])
