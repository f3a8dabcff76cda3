import numpy as np
import pytest

from multigrain.evaluation.copy_detection_metrics import (
    copy_detection_metrics,
    micro_average_precision,
    precision_recall,
    recall_at_precision,
)


def brute_force(predictions, ground_truth, ranks=(1, 10)):
    """The DISC21 definitions transcribed literally, one prediction at a time."""
    ground_truth = set(ground_truth)
    ranked = sorted(predictions, key=lambda p: (-p[2], (p[0], p[1]) in ground_truth))
    true_positives, previous_recall, micro_ap = 0, 0.0, 0.0
    best_recall, threshold = 0.0, None
    for i, (query, reference, score) in enumerate(ranked, start=1):
        true_positives += (query, reference) in ground_truth
        precision, recall = true_positives / i, true_positives / len(ground_truth)
        micro_ap += (recall - previous_recall) * precision
        previous_recall = recall
        if precision >= 0.9 and recall > best_recall:
            best_recall, threshold = recall, score
    results = {"muAP": micro_ap, "recall@P90": best_recall, "threshold@P90": threshold}
    for k in ranks:
        hits = 0
        for query, reference in ground_truth:
            own = [p[2] for p in predictions if p[0] == query and p[1] == reference]
            if own:
                rank = sum(1 for p in predictions if p[0] == query and p[2] >= own[0]) - 1
                hits += rank < k
        results[f"recall@{k}"] = hits / len(ground_truth)
    return results


def metrics_of(predictions, ground_truth):
    queries, references, scores = zip(*predictions) if predictions else ((), (), ())
    return copy_detection_metrics(list(queries), list(references), list(scores), ground_truth)


def test_hand_made_case():
    ground_truth = [("q1", "r1"), ("q2", "r2"), ("q3", "r3"), ("q4", "r4")]
    predictions = [
        ("q1", "r1", 0.9),  # true: precision 1/1
        ("q2", "r9", 0.8),  # false
        ("q2", "r2", 0.7),  # true: precision 2/3
        ("q5", "r5", 0.6),  # false (q5 has no match)
        ("q3", "r8", 0.5),  # false
        ("q3", "r3", 0.4),  # true: precision 3/6, and q3's rank 1
    ]
    metrics = metrics_of(predictions, ground_truth)
    assert metrics["muAP"] == pytest.approx((1 + 2 / 3 + 3 / 6) / 4)
    assert metrics["recall@P90"] == pytest.approx(0.25)
    assert metrics["threshold@P90"] == 0.9
    assert metrics["recall@1"] == pytest.approx(1 / 4)  # q2's r2 comes after r9; q4 is never predicted
    assert metrics["recall@10"] == pytest.approx(3 / 4)


def test_ties_are_ranked_worst_case():
    ground_truth = [("q1", "r1"), ("q2", "r2")]
    # All equal: the false prediction goes first whatever the input order.
    for predictions in (
        [("q1", "r1", 1.0), ("q2", "r2", 1.0), ("q3", "r3", 1.0)],
        [("q3", "r3", 1.0), ("q2", "r2", 1.0), ("q1", "r1", 1.0)],
    ):
        metrics = metrics_of(predictions, ground_truth)
        assert metrics["muAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
        assert metrics["recall@P90"] == 0.0 and metrics["threshold@P90"] is None
    # A tie within one query: its rank counts the other prediction scoring >= it.
    metrics = metrics_of([("q1", "r1", 0.5), ("q1", "r7", 0.5), ("q2", "r2", 0.9)], ground_truth)
    assert metrics["recall@1"] == pytest.approx(1 / 2)
    assert metrics["recall@10"] == pytest.approx(1.0)


def test_precision_90_reached_later_keeps_the_highest_recall():
    ground_truth = [(f"q{i}", f"r{i}") for i in range(20)]
    predictions = [(f"q{i}", f"r{i}", 100.0 - i) for i in range(19)]
    predictions.insert(1, ("q99", "r0", 99.5))  # one early false prediction: precision 1/2 at position 2
    curve = precision_recall(*zip(*predictions), ground_truth)
    recall, threshold = recall_at_precision(curve, 0.9)
    assert recall == pytest.approx(19 / 20) and threshold == 100.0 - 18
    assert micro_average_precision(curve) == pytest.approx(brute_force(predictions, ground_truth)["muAP"])


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_the_brute_force_definitions(seed):
    rng = np.random.default_rng(seed)
    num_queries, num_references = 15, 12
    ground_truth = {(f"q{q}", f"r{rng.integers(num_references)}") for q in range(num_queries) if rng.random() < 0.6}
    ground_truth.add(("q0", "r0"))
    pairs = {(f"q{rng.integers(num_queries)}", f"r{rng.integers(num_references)}") for _ in range(60)}
    pairs |= {pair for pair in ground_truth if rng.random() < 0.7}
    # Few distinct scores, so that ties within and across queries are common.
    predictions = [(query, reference, float(rng.integers(0, 6)) / 4) for query, reference in sorted(pairs)]
    rng.shuffle(predictions)
    expected = brute_force(predictions, ground_truth)
    metrics = metrics_of(predictions, ground_truth)
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), name


def test_duplicate_predictions_are_refused():
    with pytest.raises(ValueError, match=r"prediction 2 repeats the pair \(query q1, reference r1\)"):
        metrics_of([("q1", "r1", 0.9), ("q1", "r2", 0.8), ("q1", "r1", 0.1)], [("q1", "r1")])


def test_no_prediction_scores_zero_and_an_empty_ground_truth_is_refused():
    metrics = metrics_of([], [("q1", "r1")])
    assert metrics == {"muAP": 0.0, "recall@P90": 0.0, "threshold@P90": None, "recall@1": 0.0, "recall@10": 0.0}
    with pytest.raises(ValueError, match="no \\(query, reference\\) pair"):
        metrics_of([("q1", "r1", 1.0)], [])
