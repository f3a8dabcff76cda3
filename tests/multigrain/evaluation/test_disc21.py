import argparse

import numpy as np
import pytest
import torch

import evaluate
from multigrain.evaluation import disc21
from multigrain.search.nn_search import knn, knn_blocks, top_pairs
from tools import synthetic_data


def all_pairs_sorted(queries, database, offsets):
    """Every (query, row, score) pair, scored as knn scores them (float64 products rounded to float32)."""
    scores = (torch.from_numpy(queries).double() @ torch.from_numpy(database).double().T).float().numpy()
    scores = scores.astype(np.float64) + offsets[:, None]
    query_indices, rows = np.meshgrid(np.arange(len(queries)), np.arange(len(database)), indexing="ij")
    order = np.argsort(-scores.reshape(-1), kind="stable")
    return query_indices.reshape(-1)[order], rows.reshape(-1)[order], scores.reshape(-1)[order]


def assert_same_selection(selected, expected, max_results):
    """The same scores, and the same pairs except among those tied with the last score (either way)."""
    query_indices, rows, scores = selected
    expected_queries, expected_rows, expected_scores = (part[:max_results] for part in expected)
    np.testing.assert_array_equal(scores, expected_scores)
    assert np.all(np.diff(scores) <= 0)
    above = expected_scores > expected_scores[-1]
    assert set(zip(query_indices[scores > scores[-1]], rows[scores > scores[-1]])) == set(
        zip(expected_queries[above], expected_rows[above])
    )
    full_queries, full_rows, full_scores = expected
    at_cut = set(zip(full_queries[full_scores == scores[-1]], full_rows[full_scores == scores[-1]]))
    assert set(zip(query_indices[scores == scores[-1]], rows[scores == scores[-1]])) <= at_cut


@pytest.mark.parametrize("block_rows", [2**18, 30])
@pytest.mark.parametrize("use_faiss", [False, True])
@pytest.mark.parametrize("max_results", [1, 7, 60, 400])
def test_global_selection_equals_sorting_all_pairs(use_faiss, max_results, block_rows):
    rng = np.random.default_rng(max_results)
    database = rng.normal(size=(97, 16)).astype(np.float32)
    queries = rng.normal(size=(23, 16)).astype(np.float32)
    queries[0] = database[:40].mean(axis=0) * 6  # one query close to many rows: its k grows
    offsets = rng.normal(size=23)
    selected = top_pairs(queries, database, max_results, offsets, 8, use_faiss, block_rows)
    assert_same_selection(selected, all_pairs_sorted(queries, database, offsets), max_results)


@pytest.mark.parametrize("use_faiss", [False, True])
def test_knn_over_blocks_equals_knn(use_faiss):
    """--disc21-knn's search: blocks of 16 rows (the last one shorter than k) give knn's result, ties included."""
    rng = np.random.default_rng(0)
    database = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(30, 4)).astype(np.float32)
    for k in (1, 5, 50):
        expected = knn(queries, database, k, 7, use_faiss)
        scores, rows = knn_blocks(torch.from_numpy(queries), database, k, 7, use_faiss, block_rows=16)
        np.testing.assert_array_equal(scores.numpy(), expected[0])
        np.testing.assert_array_equal(rows.numpy(), expected[1])


def test_global_selection_with_exact_ties():
    """Small integer descriptors score exactly: many pairs tie, including at the cut."""
    rng = np.random.default_rng(0)
    database = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(30, 4)).astype(np.float32)
    offsets = np.zeros(30)
    for max_results in (5, 33, 1500):
        selected = top_pairs(queries, database, max_results, offsets, chunk_size=7, use_faiss=False, block_rows=16)
        assert len(selected[0]) == min(max_results, 1500)
        assert_same_selection(selected, all_pairs_sorted(queries, database, offsets), max_results)


def disc21_args(**overrides):
    values = dict(
        search="torch",
        chunk_size=16,
        score_norm=False,
        score_norm_factor=2.0,
        score_norm_neighbors=3,
        disc21_knn=None,
        max_results=50,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def unit_rows(rng, n, d=8):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("search", ["torch", "faiss"])
def test_score_normalisation_against_a_direct_computation(search):
    rng = np.random.default_rng(1)
    features = {"disc21_queries": unit_rows(rng, 20), "disc21_references": unit_rows(rng, 60)}
    features["disc21_training"] = unit_rows(rng, 30)
    args = disc21_args(search=search, score_norm=True, score_norm_factor=1.5, score_norm_neighbors=4)
    query_indices, rows, scores = evaluate.search_disc21(features, args, torch.device("cpu"))

    queries, references = features["disc21_queries"].astype(np.float64), features["disc21_references"]
    training_similarities = np.sort(queries @ features["disc21_training"].T.astype(np.float64), axis=1)[:, ::-1]
    normalised = queries @ references.T.astype(np.float64) - 1.5 * training_similarities[:, 3:4]
    direct = 2 * normalised - 2  # -|q - r|^2 for unit vectors, with the normalisation
    assert len(scores) == 50
    np.testing.assert_allclose(scores, direct[query_indices, rows], atol=1e-5)
    assert scores[-1] >= np.sort(direct.reshape(-1))[::-1][49] - 1e-5
    # Without normalisation the scores are -|q - r|^2.
    query_indices, rows, scores = evaluate.search_disc21(features, disc21_args(search=search), torch.device("cpu"))
    distances = ((queries[query_indices] - references[rows]) ** 2).sum(axis=1)
    np.testing.assert_allclose(scores, -distances, atol=1e-5)


def test_per_query_knn_mode():
    rng = np.random.default_rng(2)
    features = {"disc21_queries": unit_rows(rng, 5), "disc21_references": unit_rows(rng, 12)}
    query_indices, rows, scores = evaluate.search_disc21(features, disc21_args(disc21_knn=3), torch.device("cpu"))
    np.testing.assert_array_equal(query_indices, np.repeat(np.arange(5), 3))
    expected = np.argsort(-(features["disc21_queries"] @ features["disc21_references"].T), axis=1)[:, :3]
    np.testing.assert_array_equal(rows.reshape(5, 3), expected)


def test_descriptors_must_be_unit_vectors():
    rng = np.random.default_rng(3)
    features = {"disc21_queries": unit_rows(rng, 5) * 2, "disc21_references": unit_rows(rng, 12)}
    with pytest.raises(evaluate.utils.UsageError, match="disc21_queries descriptors are not unit vectors"):
        evaluate.search_disc21(features, disc21_args(), torch.device("cpu"))


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("disc21_layout") / "disc21"
    written = synthetic_data.make_disc21(root, num_references=12, num_matched=6, num_unrelated=3, num_training=5)
    return root, written


def test_layout_and_lists(layout):
    root, written = layout
    benchmark = disc21.read_layout(root, root / "ground_truth.csv", with_training=True)
    assert benchmark.queries.names == sorted(written["ground_truth"])
    assert len(benchmark.references) == 12 and len(benchmark.training) == 5
    assert sorted(benchmark.ground_truth) == sorted((q, r) for q, r in written["ground_truth"].items() if r)
    subset = disc21.read_layout(
        root, root / "ground_truth.csv", root / "subset_1_queries.txt", root / "subset_1_references.txt"
    )
    # The full ground truth serves a subset: rows of other queries are skipped.
    assert {q for q, _ in subset.ground_truth} == set(subset.queries.names)
    assert {r for _, r in subset.ground_truth} <= set(subset.references.names)


@pytest.mark.parametrize(
    "content, message",
    [
        ("query_id,reference_id\nQ00000,R000001\nQ99999,R000002\n", "line 3: query 'Q99999' is not an image"),
        ("Q00000,R999999\n", "line 1: reference 'R999999' is not an image"),
        ("query_id,reference_id\nQ00000\n", "line 2: expected 'query_id,reference_id'"),
        ("Q00000,R000001\nQ00000,R000001\n", r"line 2: the pair \(Q00000, R000001\) was already on line 1"),
        ("Q00000,\n", "no query evaluated has a reference"),
    ],
)
def test_bad_ground_truth_is_refused_naming_file_and_line(layout, tmp_path, content, message):
    root, _ = layout
    path = tmp_path / "gt.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        disc21.read_layout(root, path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("query_id,reference_id,score\nQ00000,R000001,0.5\nQ00000,R000001,0.2\n", "line 3: the pair"),
        ("Q00000,R000001\n", "line 1: expected 'query_id,reference_id,score'"),
        ("Q00000,R000001,high\n", "line 1: score 'high' is not a number"),
        ("Q00000,R000001,nan\n", "line 1: score 'nan' is not finite"),
        ("Q00000,X1,0.5\n", "line 1: reference 'X1' is not one of the 12 references"),
    ],
)
def test_bad_predictions_are_refused_naming_file_and_line(tmp_path, layout, content, message):
    root, written = layout
    path = tmp_path / "predictions.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        disc21.read_predictions(path, list(written["ground_truth"]), written["references"])
    assert str(path) in str(error.value)


def test_list_file_with_bad_ids_is_refused(layout, tmp_path):
    root, _ = layout
    path = tmp_path / "queries.txt"
    path.write_text("Q00000\nR000001\n")
    with pytest.raises(ValueError, match=f"{path} line 2: 'R000001' is not a queries image id"):
        disc21.read_layout(root, root / "ground_truth.csv", query_list=path)
    path.write_text("Q00000\nQ77777\n")
    with pytest.raises(FileNotFoundError, match="image Q77777 has no file"):
        disc21.read_layout(root, root / "ground_truth.csv", query_list=path)


def test_search_benchmark_runs(capsys):
    from benchmarks import disc21_search

    flags = ["--num-references", "300", "--num-queries", "20", "--max-results", "50", "--dim", "8", "--rounds", "1"]
    results = disc21_search.main(disc21_search.get_args_parser().parse_args(flags))
    assert results[300]["ratio"] > 0 and results[300]["cpu_ratio"] > 0
    assert "top_pairs (faiss)" in capsys.readouterr().out
