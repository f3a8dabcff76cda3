"""Retrieval metrics of the official evaluation tools (INRIA Holidays, UKBench, Copydays, revisitop).

A ranking is a 1-D array of database indices sorted best first (one row of the indices returned
by `multigrain.search.nn_search.knn`, or of an argsort of distances). Rankings may be truncated: a
positive that is not ranked adds nothing to the AP. Functions taking several rankings accept a
2-D array with one row per query or a sequence of 1-D arrays. Where a function only needs the
positions of the positives and junk items, a ranking can also be given as `KnownPositions`, which
holds just those (from `multigrain.search.nn_search.ranking_positions`), so that a million-image ranking
is never built.
"""

from pathlib import Path

import numpy as np


def average_precision(ranks, num_positives: int) -> float:
    """Trapezoid AP of the Holidays tool and of revisitop's compute_ap.

    ranks: increasing 0-based ranks of the positives that were retrieved (junk already removed).
    The k-th positive (k = 0, 1, ...) found at rank r adds (p0 + p1) / 2 / num_positives with
    p0 = 1 if r == 0 else k / r and p1 = (k + 1) / (r + 1).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if num_positives <= 0:
        raise ValueError(f"num_positives must be positive, got {num_positives}")
    if ranks.ndim != 1 or len(ranks) > num_positives:
        raise ValueError(f"expected at most {num_positives} ranks in a 1-D array, got shape {ranks.shape}")
    found = np.arange(len(ranks), dtype=np.float64)
    precision_before = np.where(ranks == 0, 1.0, found / np.maximum(ranks, 1.0))
    precision_after = (found + 1.0) / (ranks + 1.0)
    return float(np.sum((precision_before + precision_after) / 2.0) / num_positives)


class KnownPositions(dict):
    """A ranking known at some database indices only: {database index: 0-based position}."""

    def positions(self, indices):
        """Sorted positions of the distinct `indices` (as a ranking lists each item once); each must be known."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        missing = [int(index) for index in indices if int(index) not in self]
        if missing:
            raise KeyError(f"the positions of database items {missing[:5]} are not known")
        return np.sort(np.array([self[int(index)] for index in indices], dtype=np.int64))


def positive_ranks(ranking, positives, junk=()):
    """0-based ranks of the positives in `ranking` once the junk items are taken out of it."""
    if isinstance(ranking, KnownPositions):
        positions, junk_positions = ranking.positions(positives), ranking.positions(junk)
    else:
        ranking = np.asarray(ranking)
        if ranking.ndim != 1:
            raise ValueError(f"a ranking must be 1-D, got shape {ranking.shape}")
        positions = np.flatnonzero(np.isin(ranking, np.asarray(positives)))
        junk_positions = np.flatnonzero(np.isin(ranking, np.asarray(junk)))
    # Each positive moves up by the number of junk items ranked before it.
    return positions - np.searchsorted(junk_positions, positions)


def holidays_ground_truth(image_names):
    """Queries and positives of INRIA Holidays from its image names (NNNNXX.jpg, any folder).

    Returns a list of (query index, positive indices), queries in the order of `image_names`. Every
    number NNNNXX names one image (100000.jpg and 100000.JPG are refused). A query is an image whose
    int(stem) % 100 == 0; its positives are the other images whose stem starts with the same 4 digits.
    """
    stems = [Path(name).stem for name in image_names]
    for name, stem in zip(image_names, stems):
        if not stem.isdigit() or len(stem) != 6:
            raise ValueError(f"not a Holidays image name (expected NNNNXX.jpg): {name}")
    first_of_stem = {}
    for name, stem in zip(image_names, stems):
        if stem in first_of_stem:
            raise ValueError(f"two Holidays images have the number {stem}: {first_of_stem[stem]} and {name}")
        first_of_stem[stem] = name
    groups = np.array([stem[:4] for stem in stems])
    ground_truth = []
    for index, stem in enumerate(stems):
        if int(stem) % 100 == 0:
            same_group = np.flatnonzero(groups == groups[index])
            ground_truth.append((index, same_group[same_group != index]))
    return ground_truth


def holidays_map(image_names, rankings) -> float:
    """mAP of INRIA Holidays.

    rankings[i] ranks the database `image_names` (by index) for the i-th query of
    `holidays_ground_truth(image_names)`; the query itself is removed from its own ranking.
    """
    ground_truth = holidays_ground_truth(image_names)
    if len(rankings) != len(ground_truth):
        raise ValueError(f"got {len(rankings)} rankings for {len(ground_truth)} Holidays queries")
    aps = []
    for (query, positives), ranking in zip(ground_truth, rankings):
        if len(positives) == 0:
            raise ValueError(f"Holidays query {image_names[query]} has no other image in its group")
        ranks = positive_ranks(ranking, positives, junk=[query])
        aps.append(average_precision(ranks, len(positives)))
    return float(np.mean(aps))


def ukbench_score(rankings) -> float:
    """UKBench N-S score: mean number of images of the query's group among its top 4 (max 4).

    rankings: (N, >= 4) array, row i ranks all N images (itself included) for image i, images in
    sorted name order so that image i belongs to group i // 4.
    """
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or rankings.shape[1] < 4:
        raise ValueError(f"UKBench rankings must be (N, >= 4), got shape {rankings.shape}")
    if len(rankings) % 4 != 0:
        raise ValueError(f"UKBench has groups of 4 images, got {len(rankings)} queries")
    query_groups = np.arange(len(rankings))[:, None] // 4
    return float(np.mean(np.sum(rankings[:, :4] // 4 == query_groups, axis=1)))


def copydays_map(rankings, positives) -> float:
    """mAP of Copydays: query i has exactly one positive, the database index positives[i]."""
    positives = np.asarray(positives)
    if positives.ndim != 1 or len(positives) != len(rankings):
        raise ValueError(f"need one positive per ranking: {len(rankings)} rankings, positives shape {positives.shape}")
    aps = [average_precision(positive_ranks(ranking, [positive]), 1) for ranking, positive in zip(rankings, positives)]
    return float(np.mean(aps))


def compute_map(rankings, gnd, kappas=(1, 5, 10)):
    """revisitop's compute_map: (mAP, per-query APs, mean precision at kappas, per-query precisions).

    gnd[i] is a dict with 'ok' (positive database indices) and optionally 'junk' (indices removed
    from the ranking before scoring). Queries without positives are skipped (their AP and
    precisions are NaN); if every query is skipped, the means are NaN. A truncated ranking that
    holds none of a query's positives gives precisions of 0 (revisitop fails there). Unlike
    revisitop, whose ranks are (database x queries), rankings[i] is the ranking of query i.
    """
    if len(rankings) != len(gnd):
        raise ValueError(f"got {len(rankings)} rankings for {len(gnd)} ground-truth entries")
    aps = np.full(len(gnd), np.nan)
    precisions = np.full((len(gnd), len(kappas)), np.nan)
    for i, (ranking, query_gnd) in enumerate(zip(rankings, gnd)):
        positives = np.asarray(query_gnd["ok"])
        if len(positives) == 0:
            continue
        ranks = positive_ranks(ranking, positives, query_gnd.get("junk", ()))
        aps[i] = average_precision(ranks, len(positives))
        precisions[i] = _precisions_at(ranks + 1, kappas)
    if np.all(np.isnan(aps)):
        return float("nan"), aps, np.full(len(kappas), np.nan), precisions
    return float(np.nanmean(aps)), aps, np.nanmean(precisions, axis=0), precisions


def _precisions_at(one_based_ranks, kappas):
    # revisitop divides by min(k, rank of the last positive found), not by k.
    if len(one_based_ranks) == 0:
        return np.zeros(len(kappas))
    last = one_based_ranks.max()
    return np.array([np.sum(one_based_ranks <= min(last, k)) / min(last, k) for k in kappas])


def revisitop_protocols(gnd):
    """The Easy, Medium and Hard ground truths of ROxford5k / RParis6k from the pickled `gnd` list."""

    def indices(query_gnd, *keys):
        return np.concatenate([np.asarray(query_gnd[key], dtype=np.int64).reshape(-1) for key in keys])

    return {
        "easy": [{"ok": indices(g, "easy"), "junk": indices(g, "junk", "hard")} for g in gnd],
        "medium": [{"ok": indices(g, "easy", "hard"), "junk": indices(g, "junk")} for g in gnd],
        "hard": [{"ok": indices(g, "hard"), "junk": indices(g, "junk", "easy")} for g in gnd],
    }


def revisitop_map(rankings, gnd, kappas=(1, 5, 10)):
    """Revisited Oxford / Paris results: {protocol: {"mAP": ..., "mP@k": ...}}, as fractions in [0, 1]."""
    results = {}
    for protocol, protocol_gnd in revisitop_protocols(gnd).items():
        mean_ap, _, mean_precisions, _ = compute_map(rankings, protocol_gnd, kappas)
        results[protocol] = {"mAP": mean_ap}
        results[protocol].update({f"mP@{k}": float(p) for k, p in zip(kappas, mean_precisions)})
    return results
