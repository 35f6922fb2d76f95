import numpy as np
import pytest

from avarnet.metrics import classification_metrics


def test_metrics_by_hand():
    classes = ["crash", "normal", "pain"]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.7, 0.2, 0.1], [0.4, 0.5, 0.1],   # crash: right, wrong (normal)
        [0.1, 0.8, 0.1], [0.2, 0.7, 0.1],   # normal: both right
        [0.1, 0.1, 0.8], [0.6, 0.1, 0.3],   # pain: right, wrong (crash)
    ])
    m = classification_metrics(y, probs, classes)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # precision: crash 1/2, normal 2/3, pain 1/1 ; recall: 1/2, 1, 1/2
    assert m["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["per_class"]["normal"]["support"] == 2
    # AP of "normal": scores 0.8, 0.7 are the two positives and rank first -> 1.0
    assert m["per_class"]["normal"]["ap"] == pytest.approx(1.0)
    # binary: anomaly score 1 - p(normal) = [.8,.5,.2,.3,.9,.9]; positives idx 0,1,4,5 -> ranks .9,.9,.8 then .5: AP 1
    assert m["binary_ap"] == pytest.approx(1.0)
    assert m["n"] == 6 and m["classes"] == classes


def test_binary_ap_absent_without_normal_class():
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
    assert "binary_ap" not in m and m["accuracy"] == 1.0
