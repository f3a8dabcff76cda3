import math

import numpy as np
import pytest

from multigrain.evaluation.retrieval_metrics import (
    KnownPositions,
    average_precision,
    compute_map,
    copydays_map,
    holidays_ground_truth,
    holidays_map,
    positive_ranks,
    revisitop_map,
    revisitop_protocols,
    ukbench_score,
)


def test_average_precision_by_hand():
    # ranks [0, 1]: (1 + 1) / 2 + (1/1 + 2/2) / 2 = 2, over 2 positives
    assert average_precision([0, 1], 2) == pytest.approx(1.0)
    # ranks [1, 3]: (0/1 + 1/2) / 2 + (1/3 + 2/4) / 2 = 1/4 + 5/12 = 2/3, over 2 positives
    assert average_precision([1, 3], 2) == pytest.approx(1 / 3)
    # rank [2], 2 of 3 positives never ranked: (0/2 + 1/3) / 2 = 1/6, over 3 positives
    assert average_precision([2], 3) == pytest.approx(1 / 18)
    assert average_precision([], 4) == 0.0


def test_average_precision_rejects_bad_input():
    with pytest.raises(ValueError, match="num_positives"):
        average_precision([0], 0)
    with pytest.raises(ValueError, match="at most 1"):
        average_precision([0, 1], 1)


def test_positive_ranks_removes_junk():
    # positives 2 and 4 sit at positions 2 and 4, after one and two junk items
    ranks = positive_ranks([5, 9, 2, 7, 4], positives=[2, 4], junk=[9, 7])
    np.testing.assert_array_equal(ranks, [1, 2])
    np.testing.assert_array_equal(positive_ranks([5, 9, 2, 7, 4], positives=[4, 2]), [2, 4])


HOLIDAYS_NAMES = [
    "jpg/100000.jpg",
    "jpg/100001.jpg",
    "jpg/100002.jpg",  # query 0, positives 1 and 2
    "jpg/100100.jpg",
    "jpg/100101.jpg",  # query 3, positive 4
    "jpg/100200.jpg",
    "jpg/100201.jpg",
    "jpg/100202.jpg",  # last group: query 5, positives 6 and 7
]


def test_holidays_ground_truth():
    ground_truth = holidays_ground_truth(HOLIDAYS_NAMES)
    assert [query for query, _ in ground_truth] == [0, 3, 5]
    for (_, positives), expected in zip(ground_truth, ([1, 2], [4], [6, 7])):
        np.testing.assert_array_equal(positives, expected)


def test_holidays_map_by_hand():
    rankings = [
        # without the query: [3, 1, 4, 2, ...], positives at ranks 1 and 3: AP = 1/3 (see above)
        [0, 3, 1, 4, 2, 5, 6, 7],
        # without the query: positive at rank 0: AP = 1 (it would be 1/4 if the query stayed)
        [3, 4, 0, 1, 2, 5, 6, 7],
        # without the query: [6, 0, 1, 2, 3, 4, 7], positives at ranks 0 and 6:
        # ((1 + 1) / 2 + (1/6 + 2/7) / 2) / 2 = (1 + 19/84) / 2 = 103/168
        [6, 5, 0, 1, 2, 3, 4, 7],
    ]
    expected = (1 / 3 + 1 + 103 / 168) / 3  # the last group counts: without it, 2/3
    assert holidays_map(HOLIDAYS_NAMES, rankings) == pytest.approx(expected)
    assert holidays_map(HOLIDAYS_NAMES, np.array(rankings)) == pytest.approx(expected)


def test_holidays_map_truncated_rankings():
    # query 0: positive 1 at rank 1 (after removing the query), positive 2 never ranked:
    # (0/1 + 1/2) / 2 / 2 = 1/8; query 3: positive at rank 0: 1; query 5: no positive ranked: 0
    rankings = [[0, 3, 1], [4, 3, 0], [5, 0, 1]]
    assert holidays_map(HOLIDAYS_NAMES, rankings) == pytest.approx((1 / 8 + 1 + 0) / 3)


def test_holidays_rejects_bad_input():
    with pytest.raises(ValueError, match="holiday.png"):
        holidays_ground_truth(["100000.jpg", "holiday.png"])
    with pytest.raises(ValueError, match="100100.jpg"):
        holidays_map(["100000.jpg", "100001.jpg", "100100.jpg"], [[1, 2], [0, 1]])
    with pytest.raises(ValueError, match="3 Holidays queries"):
        holidays_map(HOLIDAYS_NAMES, [[0, 1, 2]])


def test_ukbench_score_by_hand():
    rankings = np.array(
        [
            [0, 1, 2, 3, 7],  # 4 of group 0
            [1, 0, 4, 2, 3],  # 3 (image 3 in fifth place does not count)
            [2, 5, 6, 7, 0],  # 1
            [4, 5, 6, 7, 3],  # 0, not even the query itself
            [4, 5, 6, 7, 0],  # 4 of group 1
            [5, 4, 6, 7, 0],
            [6, 7, 4, 5, 0],
            [7, 6, 5, 4, 0],
        ]
    )
    assert ukbench_score(rankings) == pytest.approx((4 + 3 + 1 + 0 + 16) / 8)


def test_ukbench_rejects_bad_input():
    with pytest.raises(ValueError, match="groups of 4"):
        ukbench_score(np.zeros((6, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        ukbench_score(np.zeros((8, 3), dtype=np.int64))


def test_copydays_map_by_hand():
    positives = [2, 0, 4]
    rankings = [
        [2, 0, 1, 3, 4],  # rank 0: AP 1
        [3, 1, 0, 2, 4],  # rank 2: (0/2 + 1/3) / 2 = 1/6
        [0, 1, 2],  # never ranked: 0
    ]
    assert copydays_map(rankings, positives) == pytest.approx((1 + 1 / 6 + 0) / 3)
    with pytest.raises(ValueError, match="one positive per ranking"):
        copydays_map(rankings, [2, 0])


REVISITOP_GND = [
    {"easy": [1, 4], "hard": [6], "junk": [2], "bbx": [0.0, 0.0, 10.0, 10.0]},
    {"easy": [0], "hard": [], "junk": [], "bbx": [1.0, 1.0, 5.0, 5.0]},
]
REVISITOP_RANKINGS = np.array(
    [
        [2, 1, 6, 3, 4, 0, 5, 7, 8, 9],
        [9, 0, 1, 2, 3, 4, 5, 6, 7, 8],
    ]
)


def test_revisitop_protocols():
    protocols = revisitop_protocols(REVISITOP_GND)
    expected = {
        "easy": ([1, 4], [2, 6]),
        "medium": ([1, 4, 6], [2]),
        "hard": ([6], [2, 1, 4]),
    }
    for protocol, (ok, junk) in expected.items():
        np.testing.assert_array_equal(np.sort(protocols[protocol][0]["ok"]), np.sort(ok))
        np.testing.assert_array_equal(np.sort(protocols[protocol][0]["junk"]), np.sort(junk))
    assert len(protocols["hard"][1]["ok"]) == 0


def test_revisitop_map_by_hand():
    # Query 0. Easy: junk 2 and 6 removed -> [1, 3, 4, ...], positives at ranks 0 and 2:
    #   AP = ((1 + 1) / 2 + (1/2 + 2/3) / 2) / 2 = 19/24; 1-based ranks [1, 3], last 3:
    #   P@1 = 1/1, P@5 = P@10 = 2 / min(3, k) = 2/3.
    # Medium: junk 2 removed -> [1, 6, 3, 4, ...], positives at ranks 0, 1, 3:
    #   AP = (1 + 1 + (2/3 + 3/4) / 2) / 3 = 65/72; 1-based [1, 2, 4]: P@1 = 1, P@5 = P@10 = 3/4.
    # Hard: junk 2, 1, 4 removed -> [6, ...]: AP = 1, P@k = 1.
    # Query 1 (no hard image). Easy and Medium: positive 0 at rank 1: AP = (0 + 1/2) / 2 = 1/4;
    #   1-based [2]: P@1 = 0/1, P@5 = P@10 = 1/2. Hard: no positive, the query is skipped.
    results = revisitop_map(REVISITOP_RANKINGS, REVISITOP_GND)
    assert results["easy"]["mAP"] == pytest.approx((19 / 24 + 1 / 4) / 2)
    assert results["medium"]["mAP"] == pytest.approx((65 / 72 + 1 / 4) / 2)
    assert results["hard"]["mAP"] == pytest.approx(1.0)
    assert [results["easy"][f"mP@{k}"] for k in (1, 5, 10)] == pytest.approx([0.5, 7 / 12, 7 / 12])
    assert [results["medium"][f"mP@{k}"] for k in (1, 5, 10)] == pytest.approx([0.5, 5 / 8, 5 / 8])
    assert [results["hard"][f"mP@{k}"] for k in (1, 5, 10)] == pytest.approx([1.0, 1.0, 1.0])


def test_compute_map_skips_queries_without_positives():
    hard = revisitop_protocols(REVISITOP_GND)["hard"]
    mean_ap, aps, mean_precisions, precisions = compute_map(list(REVISITOP_RANKINGS), hard, kappas=(1, 5))
    assert mean_ap == pytest.approx(1.0)
    assert aps[0] == pytest.approx(1.0) and math.isnan(aps[1])
    assert mean_precisions == pytest.approx([1.0, 1.0])
    assert np.isnan(precisions[1]).all()
    mean_ap, _, mean_precisions, _ = compute_map(REVISITOP_RANKINGS[1:], hard[1:])
    assert math.isnan(mean_ap) and np.isnan(mean_precisions).all()
    with pytest.raises(ValueError, match="2 rankings for 1"):
        compute_map(REVISITOP_RANKINGS, hard[:1])


def naive_ap_and_precisions(ranking, positives, junk, kappas):
    """The formulas re-stated by walking the ranking once, skipping junk as it comes."""
    positives, junk = set(positives), set(junk)
    ap, found, rank, one_based = 0.0, 0, 0, []
    for item in ranking:
        if item in junk:
            continue
        if item in positives:
            precision_before = 1.0 if rank == 0 else found / rank
            ap += (precision_before + (found + 1) / (rank + 1)) / 2 / len(positives)
            found += 1
            one_based.append(rank + 1)
        rank += 1
    precisions = []
    for k in kappas:
        cutoff = min(max(one_based), k) if one_based else k
        precisions.append(sum(r <= cutoff for r in one_based) / cutoff)
    return ap, precisions


def test_compute_map_matches_naive_restatement_on_random_rankings():
    rng = np.random.default_rng(0)
    num_items, kappas = 60, (1, 5, 10)
    rankings, gnd = [], []
    for query in range(40):
        ranking = rng.permutation(num_items)[: rng.integers(10, num_items + 1)]  # some truncated
        shuffled = rng.permutation(num_items)
        num_ok, num_junk = (0 if query % 10 == 0 else rng.integers(1, 12)), rng.integers(0, 12)
        rankings.append(ranking)
        gnd.append({"ok": shuffled[:num_ok], "junk": shuffled[num_ok : num_ok + num_junk]})
    mean_ap, aps, mean_precisions, precisions = compute_map(rankings, gnd, kappas)
    expected_aps, expected_precisions = [], []
    for ranking, query_gnd in zip(rankings, gnd):
        if len(query_gnd["ok"]) == 0:
            continue
        ap, query_precisions = naive_ap_and_precisions(ranking, query_gnd["ok"], query_gnd["junk"], kappas)
        expected_aps.append(ap)
        expected_precisions.append(query_precisions)
    assert np.sum(np.isnan(aps)) == len(gnd) - len(expected_aps) > 0
    np.testing.assert_allclose(aps[~np.isnan(aps)], expected_aps, rtol=0, atol=1e-12)
    np.testing.assert_allclose(precisions[~np.isnan(aps)], expected_precisions, rtol=0, atol=1e-12)
    assert mean_ap == pytest.approx(np.mean(expected_aps), abs=1e-12)
    np.testing.assert_allclose(mean_precisions, np.mean(expected_precisions, axis=0), rtol=0, atol=1e-12)


def test_holidays_and_copydays_match_naive_restatement_on_random_rankings():
    rng = np.random.default_rng(1)
    names = [f"{group:04d}{member:02d}.jpg" for group in range(1000, 1012) for member in range(rng.integers(2, 6))]
    ground_truth = holidays_ground_truth(names)
    rankings = [rng.permutation(len(names)) for _ in ground_truth]
    expected = [naive_ap_and_precisions(r[r != q], p, [], ())[0] for r, (q, p) in zip(rankings, ground_truth)]
    assert holidays_map(names, rankings) == pytest.approx(np.mean(expected), abs=1e-12)

    positives = rng.integers(0, len(names), size=len(rankings))
    expected = [naive_ap_and_precisions(r, [p], [], ())[0] for r, p in zip(rankings, positives)]
    assert copydays_map(rankings, positives) == pytest.approx(np.mean(expected), abs=1e-12)


def known_positions(ranking, items):
    """What `ranking_positions` gives for a full ranking, as a KnownPositions."""
    position = {int(item): index for index, item in enumerate(ranking)}
    return KnownPositions((int(item), position[int(item)]) for item in items)


def test_known_positions_give_the_scores_of_full_rankings():
    rng = np.random.default_rng(2)
    names = [f"{group:04d}{member:02d}.jpg" for group in range(1000, 1012) for member in range(rng.integers(2, 6))]
    ground_truth = holidays_ground_truth(names)
    rankings = [rng.permutation(len(names)) for _ in ground_truth]
    known = [known_positions(r, [q, *p]) for r, (q, p) in zip(rankings, ground_truth)]
    assert holidays_map(names, known) == pytest.approx(holidays_map(names, rankings), abs=1e-15)

    positives = rng.integers(0, len(names), size=len(rankings))
    known = [known_positions(r, [p]) for r, p in zip(rankings, positives)]
    assert copydays_map(known, positives) == pytest.approx(copydays_map(rankings, positives), abs=1e-15)

    gnd = []
    for _ in rankings:
        shuffled = rng.permutation(len(names))
        sizes = np.cumsum(rng.integers(0, 5, size=3))
        gnd.append(
            {"easy": shuffled[: sizes[0]], "hard": shuffled[sizes[0] : sizes[1]], "junk": shuffled[sizes[1] : sizes[2]]}
        )
    known = [known_positions(r, np.concatenate([g["easy"], g["hard"], g["junk"]])) for r, g in zip(rankings, gnd)]
    expected = revisitop_map(rankings, gnd)
    results = revisitop_map(known, gnd)
    for protocol in expected:
        for metric, value in expected[protocol].items():
            assert results[protocol][metric] == pytest.approx(value, abs=1e-15, nan_ok=True), (protocol, metric)


def test_known_positions_count_a_repeated_item_once_like_a_ranking():
    ranking = np.array([4, 0, 3, 1, 2])
    known = known_positions(ranking, [0, 1, 3])
    assert positive_ranks(known, [1, 1, 0], junk=[3, 3]).tolist() == positive_ranks(ranking, [1, 1, 0], [3, 3]).tolist()


def test_known_positions_refuse_an_unknown_item():
    with pytest.raises(KeyError, match=r"database items \[7\]"):
        copydays_map([KnownPositions({3: 0})], [7])
