import numpy as np
import pytest
from conftest import strict_load

from avarnet.metrics import classification_metrics, strict_json_values, strict_metrics_json


def test_metrics_by_hand():
    classes = ["crash", "normal", "pain"]
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.4, 0.5, 0.1],  # crash: right, wrong (normal)
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],  # normal: both right
            [0.1, 0.1, 0.8],
            [0.6, 0.1, 0.3],  # pain: right, wrong (crash)
        ]
    )
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


def test_weighted_and_macro_match_scikit_learn_on_imbalanced_data():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    classes = ["abuse", "crash", "normal", "pain"]
    y = np.repeat([0, 1, 2, 3], [40, 10, 4, 2])  # imbalanced
    probs = rng.dirichlet(np.ones(4), size=len(y))
    probs[np.arange(len(y)), y] += rng.uniform(0, 0.6, len(y))  # better than chance, not perfect
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, classes)
    for avg, suffix in (("macro", ""), ("weighted", "_weighted")):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=[0, 1, 2, 3], average=avg, zero_division=0
        )
        assert m["precision" + suffix] == pytest.approx(p)
        assert m["recall" + suffix] == pytest.approx(r)
        assert m["f1" + suffix] == pytest.approx(f)
    assert m["recall_weighted"] == pytest.approx(m["accuracy"])
    assert m["f1_weighted"] != pytest.approx(m["f1"])  # imbalance makes the two differ
    assert "macro" in m["averaging"]["f1"] and "weighted" in m["averaging"]["f1_weighted"]


def test_class_without_test_clips_gives_null_with_reason_and_strict_json():
    classes = ["crash", "normal", "pain"]
    y = np.array([0, 0, 1, 1])  # no "pain" clips; one clip predicted as pain
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(y, probs, classes)
    pain = m["per_class"]["pain"]
    assert (
        pain["support"] == 0
        and pain["recall"] is None
        and pain["f1"] is None
        and pain["ap"] is None
    )
    assert pain["precision"] == 0.0  # predicted once, wrongly: defined
    assert "no test clips" in m["undefined"]["per_class.pain.ap"]
    assert m["recall"] == pytest.approx((0.5 + 1.0) / 2)  # macro over the classes with clips
    doc = strict_load(strict_metrics_json(m))
    assert doc["per_class"]["pain"]["recall"] is None


def test_binary_ap_without_anomalies_is_null_with_reason():
    m = classification_metrics(
        np.array([1, 1]), np.array([[0.1, 0.9], [0.3, 0.7]]), ["crash", "normal"]
    )
    assert m["binary_ap"] is None and "no anomalous" in m["undefined"]["binary_ap"]


def test_strict_metrics_json_replaces_nan_and_inf_and_says_where():
    text = strict_metrics_json(
        {
            "a": float("nan"),
            "b": [1.0, np.float32("inf")],
            "c": {"d": np.float64(0.5)},
            "undefined": {"x": "given"},
        }
    )
    doc = strict_load(text)
    assert doc["a"] is None and doc["b"] == [1.0, None] and doc["c"]["d"] == 0.5
    assert set(doc["undefined"]) == {"a", "b.1", "x"}
    clean, replaced = strict_json_values({"k": [float("-inf")]})
    assert clean == {"k": [None]} and list(replaced) == ["k.0"]


# -- frame-level APs: step-wise (scikit-learn) and trapezoid (published XD-Violence code) -------


@pytest.mark.parametrize(
    "y, s, step, trapezoid",
    [
        # no ties: PR points (R, P) by threshold .8 (1/2, 1), .4 (1/2, 1/2), .35 (1, 2/3), .1 (1, 1/2)
        # step = 1/2 * 1 + 1/2 * 2/3; trapezoid from (0, 1): 1/2 * 1 + 0 + 1/2 * (1/2 + 2/3) / 2
        # = 19/24 (below the step-wise AP)
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 5 / 6, 19 / 24),
        # a three-way tie at .5 (two positives, one negative): thresholds .9 (1/3, 1),
        # .5 (1, 3/4), .1 (1, 3/5); step = 1/3 * 1 + 2/3 * 3/4 = 5/6;
        # trapezoid = 1/3 * 1 + 2/3 * (1 + 3/4) / 2 = 11/12 (above the step-wise AP)
        ([0, 1, 1, 0, 1], [0.5, 0.5, 0.9, 0.1, 0.5], 5 / 6, 11 / 12),
        # the top score tied between a positive and a negative: .7 (1/2, 1/2), .2 (1, 2/3),
        # .1 (1, 1/2); step = 1/2 * 1/2 + 1/2 * 2/3 = 7/12;
        # trapezoid = 1/2 * (1 + 1/2) / 2 + 1/2 * (1/2 + 2/3) / 2 = 3/8 + 7/24 = 2/3
        ([1, 0, 1, 0], [0.7, 0.7, 0.2, 0.1], 7 / 12, 2 / 3),
        # every score tied: step = positive rate 1/4, trapezoid = (1 + 1/4) / 2
        ([0, 0, 0, 1], [0.3, 0.3, 0.3, 0.3], 1 / 4, 5 / 8),
    ],
)
def test_step_and_trapezoid_ap_by_hand_with_ties(y, s, step, trapezoid):
    from avarnet.metrics import frame_level_metrics, pr_auc_trapezoid

    y, s = np.array(y), np.array(s)
    m = frame_level_metrics(y, s)
    assert m["frame_ap"] == pytest.approx(step)
    assert m["frame_pr_auc"] == pytest.approx(trapezoid)
    assert pr_auc_trapezoid(y, s) == pytest.approx(trapezoid)
    assert np.isnan(pr_auc_trapezoid(np.zeros(3), np.ones(3)))


def test_a_class_absent_from_the_truth_is_left_out_of_every_macro_average():
    """Worked by hand: "pain" has no test clip but is predicted once. Macro averages run over
    crash and normal only (counting pain as 0 would give precision 5/9, not 5/6); its precision
    is 0, its recall, F1 and AP undefined; weighted averages give it no weight."""
    classes = ["crash", "normal", "pain"]
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array(
        [
            [0.6, 0.3, 0.1],  # crash, right
            [0.2, 0.1, 0.7],  # crash, predicted pain
            [0.5, 0.4, 0.1],  # crash, right
            [0.1, 0.8, 0.1],  # normal, right
            [0.3, 0.6, 0.1],  # normal, right
            [0.45, 0.35, 0.2],  # normal, predicted crash
        ]
    )
    m = classification_metrics(y, probs, classes)
    assert m["confusion_matrix"] == [[2, 0, 1], [1, 2, 0], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # crash: precision 2/3, recall 2/3, F1 2/3; normal: precision 1, recall 2/3, F1 0.8
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["precision_weighted"] == pytest.approx(5 / 6)
    assert m["recall_weighted"] == pytest.approx(2 / 3)
    assert m["f1_weighted"] == pytest.approx((2 / 3 + 0.8) / 2)
    # AP, crash: positives ranked 1, 2, 5 -> (1 + 1 + 3/5) / 3; normal: 1, 2, 4 -> (1 + 1 + 3/4) / 3
    ap_crash, ap_normal = (1 + 1 + 3 / 5) / 3, (1 + 1 + 3 / 4) / 3
    assert m["per_class"]["crash"]["ap"] == pytest.approx(ap_crash)
    assert m["per_class"]["normal"]["ap"] == pytest.approx(ap_normal)
    assert m["ap"] == pytest.approx((ap_crash + ap_normal) / 2)
    pain = m["per_class"]["pain"]
    assert pain == {"precision": 0.0, "recall": None, "f1": None, "ap": None, "support": 0}
    assert set(m["undefined"]) == {f"per_class.pain.{k}" for k in ("recall", "f1", "ap")}
    # anomaly score 1 - p(normal): the non-normal clips rank 1, 2 and 4 -> (1 + 1 + 3/4) / 3
    assert m["binary_ap"] == pytest.approx((1 + 1 + 3 / 4) / 3)
