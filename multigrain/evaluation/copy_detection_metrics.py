"""The copy-detection metrics of the 2021 Image Similarity Challenge (DISC21), from their definitions.

Predictions are (query, reference, score) triples, higher score = more similar; the ground truth is a
set of (query, reference) pairs. Queries and references are any hashable ids (e.g. "Q00003").

- μAP: the predictions sorted by decreasing score, false ones first among equal scores (worst case);
  with TP_i the true predictions among the first i and N the number of ground-truth pairs,
  μAP = Σ_i (recall_i − recall_{i−1}) · precision_i = Σ over true predictions of TP_i / i, / N.
- recall at precision 90%: the highest recall_i among the positions with precision_i ≥ 0.9, and the
  score at the first position reaching it (the threshold).
- recall at rank k: a ground-truth pair (q, r) has rank (number of q's predictions scoring ≥ its score)
  − 1, infinite when not predicted; the fraction of ground-truth pairs with rank < k.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class PrecisionRecall:
    """The pooled predictions in worst-case order: their scores, precision_i, recall_i and truth at each position,
    and N."""

    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    is_true: np.ndarray
    num_ground_truth: int


def check_unique_pairs(queries, references):
    """Refuses a (query, reference) pair predicted twice."""
    seen = set()
    for position, pair in enumerate(zip(queries, references)):
        if pair in seen:
            raise ValueError(f"prediction {position} repeats the pair (query {pair[0]}, reference {pair[1]})")
        seen.add(pair)


def precision_recall(queries, references, scores, ground_truth) -> PrecisionRecall:
    """Precision and recall along the predictions sorted by decreasing score, false ones first among ties.

    queries, references, scores: one entry per prediction; ground_truth: a collection of (query,
    reference) pairs, its size N.
    """
    if not len(queries) == len(references) == len(scores):
        raise ValueError(f"{len(queries)} queries, {len(references)} references and {len(scores)} scores")
    check_unique_pairs(queries, references)
    ground_truth = set(ground_truth)
    if not ground_truth:
        raise ValueError("the ground truth has no (query, reference) pair: the metrics are undefined")
    scores = np.asarray(scores, dtype=np.float64)
    is_true = np.array([pair in ground_truth for pair in zip(queries, references)], dtype=bool)
    order = np.lexsort((is_true, -scores))  # by decreasing score, then False before True
    scores, is_true = scores[order], is_true[order]
    true_positives = np.cumsum(is_true)
    precision = true_positives / np.arange(1, len(scores) + 1)
    recall = true_positives / len(ground_truth)
    return PrecisionRecall(scores, precision, recall, is_true, len(ground_truth))


def micro_average_precision(curve: PrecisionRecall) -> float:
    """μAP: the sum of precision_i over the true predictions, divided by N."""
    return float(curve.precision[curve.is_true].sum() / curve.num_ground_truth)


def recall_at_precision(curve: PrecisionRecall, precision: float = 0.9):
    """(recall, threshold): the highest recall_i among the positions with precision_i ≥ `precision`, and the
    score at the first position reaching it; (0.0, None) when no position reaches that precision."""
    reached = np.flatnonzero(curve.precision >= precision)
    if not len(reached):
        return 0.0, None
    best = reached[np.argmax(curve.recall[reached])]  # argmax takes the first of equal recalls
    return float(curve.recall[best]), float(curve.scores[best])


def recall_at_ranks(queries, references, scores, ground_truth, ranks=(1, 10)) -> dict:
    """{k: fraction of the ground-truth pairs ranked < k among their query's predictions}."""
    ground_truth = set(ground_truth)
    if not ground_truth:
        raise ValueError("the ground truth has no (query, reference) pair: the metrics are undefined")
    scores = np.asarray(scores, dtype=np.float64)
    by_query = {}
    for query, score in zip(queries, scores):
        by_query.setdefault(query, []).append(score)
    ascending = {query: np.sort(query_scores) for query, query_scores in by_query.items()}
    predicted = {pair: score for pair, score in zip(zip(queries, references), scores) if pair in ground_truth}
    pair_ranks = []
    for pair in ground_truth:
        if pair not in predicted:
            continue
        query_scores = ascending[pair[0]]
        # Predictions of the query scoring >= the pair's score, the pair itself included.
        at_least = len(query_scores) - np.searchsorted(query_scores, predicted[pair], side="left")
        pair_ranks.append(at_least - 1)
    pair_ranks = np.array(pair_ranks, dtype=np.int64)
    return {k: float((pair_ranks < k).sum() / len(ground_truth)) for k in ranks}


def copy_detection_metrics(queries, references, scores, ground_truth, ranks=(1, 10)) -> dict:
    """μAP, recall at precision 90% with its threshold (None when not reached), and recall at `ranks`."""
    curve = precision_recall(queries, references, scores, ground_truth)
    recall_p90, threshold = recall_at_precision(curve, 0.9)
    results = {"muAP": micro_average_precision(curve), "recall@P90": recall_p90, "threshold@P90": threshold}
    for k, value in recall_at_ranks(queries, references, scores, ground_truth, ranks).items():
        results[f"recall@{k}"] = value
    return results
