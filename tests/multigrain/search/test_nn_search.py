import sys
import types

import numpy as np
import pytest
import torch

from multigrain.search.nn_search import knn, ranking_positions


def make_descriptors(num_queries=37, num_database=203, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.nn.functional.normalize(torch.randn(num_queries, dim, generator=generator), dim=1)
    database = torch.nn.functional.normalize(torch.randn(num_database, dim, generator=generator), dim=1)
    # Exact duplicates: rows 3, 150 and 200 are one descriptor, 77 and 120 another, and some
    # queries are copies of them, so that several database rows tie for first place.
    database[150] = database[3]
    database[200] = database[3]
    database[120] = database[77]
    queries[0] = database[3]
    queries[36] = database[120]
    return queries, database


def reference_search(queries, database, k):
    """All scores at once, ordered by decreasing score, then increasing index."""
    scores = (queries.double().numpy() @ database.double().numpy().T).astype(np.float32)
    columns = np.arange(scores.shape[1])
    order = np.stack([np.lexsort((columns, -row)) for row in scores])[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("k", [1, 2, 5, 64, 203])
def test_chunked_search_equals_full_search(k):
    queries, database = make_descriptors()
    full_scores, full_indices = knn(queries, database, k, chunk_size=10_000, use_faiss=False)
    reference_scores, reference_indices = reference_search(queries, database, k)
    np.testing.assert_array_equal(full_indices.numpy(), reference_indices)
    np.testing.assert_allclose(full_scores.numpy(), reference_scores, rtol=0, atol=1e-6)
    # Chunk sizes that divide neither 37 nor 203, one that divides 203, and some below k.
    for chunk_size in (1, 7, 29, 50, 203):
        scores, indices = knn(queries, database, k, chunk_size=chunk_size, use_faiss=False)
        assert torch.equal(indices, full_indices), chunk_size
        torch.testing.assert_close(scores, full_scores, rtol=0, atol=1e-6)
        assert scores.dtype == torch.float32 and indices.dtype == torch.int64


def test_duplicates_tie_and_come_by_index():
    queries, database = make_descriptors()
    for chunk_size in (1, 2, 64, 1000):
        scores, indices = knn(queries, database, 4, chunk_size=chunk_size, use_faiss=False)
        assert indices[0, :3].tolist() == [3, 150, 200]
        assert scores[0, 0] == scores[0, 1] == scores[0, 2]
        assert indices[36, :2].tolist() == [77, 120]
        # k = 2 cuts through the three-way tie: the lowest indices are kept
        _, indices = knn(queries, database, 2, chunk_size=chunk_size, use_faiss=False)
        assert indices[0].tolist() == [3, 150]


def test_all_scores_tied():
    database = torch.ones(23, 4) / 2
    queries = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.5, -0.5]])  # scores all 0 for both
    for chunk_size in (1, 4, 5, 100):
        scores, indices = knn(queries, database, 6, chunk_size=chunk_size, use_faiss=False)
        assert indices.tolist() == [list(range(6))] * 2
        assert (scores == 0).all()


def test_ranking_positions_are_the_positions_in_the_full_ranking():
    queries, database = make_descriptors()
    _, full = knn(queries, database, len(database), use_faiss=False)
    rng = np.random.default_rng(0)
    items = [rng.choice(len(database), size=rng.integers(0, 12), replace=False) for _ in range(len(queries))]
    items[0] = [200, 3, 150]  # the three-way tie for first place, out of order
    items[36] = [120, 77]
    items[5] = np.arange(len(database))  # every row: positions 0 .. 202
    expected = [np.array([full[i].tolist().index(int(j)) for j in query_items]) for i, query_items in enumerate(items)]
    assert expected[0].tolist() == [2, 0, 1] and expected[36].tolist() == [1, 0]
    for chunk_size in (1, 7, 29, 203, 4096):
        positions = ranking_positions(queries, database, items, chunk_size=chunk_size)
        assert len(positions) == len(queries)
        for query, (got, want) in enumerate(zip(positions, expected)):
            assert got.dtype == np.int64 and np.array_equal(got, want), (chunk_size, query)
    # numpy inputs, and no items at all
    positions = ranking_positions(queries.numpy(), database.numpy(), [[]] * len(queries), chunk_size=50)
    assert all(p.shape == (0,) for p in positions)


def test_ranking_positions_bad_arguments():
    queries, database = make_descriptors()
    with pytest.raises(ValueError, match="36 lists for 37 queries"):
        ranking_positions(queries, database, [[0]] * 36)
    with pytest.raises(ValueError, match=r"items of query 2 must be database indices in \[0, 203\)"):
        ranking_positions(queries, database, [[0], [1], [203]] + [[0]] * 34)
    with pytest.raises(ValueError, match=r"\(37, 8\) and \(203, 16\)"):
        ranking_positions(queries[:, :8], database, [[0]] * 37)
    with pytest.raises(ValueError, match="chunk_size"):
        ranking_positions(queries, database, [[0]] * 37, chunk_size=0)


def test_numpy_inputs_give_numpy_outputs():
    queries, database = make_descriptors()
    torch_scores, torch_indices = knn(queries, database, 9, chunk_size=16, use_faiss=False)
    scores, indices = knn(queries.numpy(), database.numpy(), 9, chunk_size=16, use_faiss=False)
    assert isinstance(scores, np.ndarray) and isinstance(indices, np.ndarray)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, torch_indices.numpy())
    np.testing.assert_array_equal(scores, torch_scores.numpy())
    # float64 and mixed inputs are searched as float32
    _, indices = knn(queries.double().numpy(), database, 9, chunk_size=16, use_faiss=False)
    np.testing.assert_array_equal(indices, torch_indices.numpy())


def test_empty_queries():
    _, database = make_descriptors()
    scores, indices = knn(np.zeros((0, 16), dtype=np.float32), database.numpy(), 3, use_faiss=False)
    assert scores.shape == (0, 3) and indices.shape == (0, 3)


def test_bad_arguments():
    queries, database = make_descriptors()
    with pytest.raises(ValueError, match="database size 203, got 204"):
        knn(queries, database, 204)
    with pytest.raises(ValueError, match="got 0"):
        knn(queries, database, 0)
    with pytest.raises(ValueError, match=r"\(37, 8\) and \(203, 16\)"):
        knn(queries[:, :8], database, 1)
    with pytest.raises(ValueError, match="chunk_size"):
        knn(queries, database, 1, chunk_size=0)


def test_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    queries, database = make_descriptors()
    with pytest.raises(ImportError, match="use_faiss=True"):
        knn(queries, database, 5, use_faiss=True)
    scores, indices = knn(queries, database, 5)
    expected_scores, expected_indices = knn(queries, database, 5, use_faiss=False)
    assert torch.equal(indices, expected_indices) and torch.equal(scores, expected_scores)


class ReversedTiesIndexFlatIP:
    """Stands in for faiss.IndexFlatIP, returning equal scores with the higher index first."""

    def __init__(self, dim):
        self.database = np.zeros((0, dim), dtype=np.float32)

    def add(self, vectors):
        self.database = np.concatenate([self.database, vectors])

    def search(self, queries, k):
        scores = queries @ self.database.T
        reversed_order = np.argsort(-scores[:, ::-1], axis=1, kind="stable")[:, :k]
        indices = len(self.database) - 1 - reversed_order
        return np.take_along_axis(scores, indices, axis=1), indices


def test_faiss_results_follow_the_same_tie_order(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatIP=ReversedTiesIndexFlatIP))
    # Multiples of 1/4 in few dimensions: every score is exact in float32, whatever the library.
    generator = torch.Generator().manual_seed(1)
    queries = torch.randint(-4, 5, (11, 3), generator=generator) / 4
    database = torch.randint(-4, 5, (60, 3), generator=generator) / 4
    scores, indices = knn(queries.numpy(), database.numpy(), 60)
    expected_scores, expected_indices = knn(queries, database, 60, chunk_size=8, use_faiss=False)
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    np.testing.assert_array_equal(scores, expected_scores.numpy())
    assert (np.diff(scores, axis=1) == 0).any()  # the data does have ties to order


class NoisyIndexFlatIP(ReversedTiesIndexFlatIP):
    """Stands in for faiss.IndexFlatIP with rounding errors: scores off by up to 1e-6, ranked by them."""

    def search(self, queries, k):
        scores = queries @ self.database.T
        scores += np.random.default_rng(0).uniform(-1e-6, 1e-6, size=scores.shape).astype(np.float32)
        indices = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, indices, axis=1), indices


def test_faiss_rounding_errors_do_not_change_the_result(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatIP=NoisyIndexFlatIP))
    queries, database = make_descriptors()
    # Near ties: rows 1e-7 apart, which the noise reorders.
    database[100:110] = database[40] + 1e-7 * torch.randn(10, 16, generator=torch.Generator().manual_seed(2))
    queries[1] = database[40]
    for k in (1, 5, 12, 203):
        scores, indices = knn(queries, database, k)
        expected_scores, expected_indices = knn(queries, database, k, use_faiss=False)
        assert torch.equal(indices, expected_indices), k
        assert torch.equal(scores, expected_scores), k
    noisy_index = NoisyIndexFlatIP(16)
    noisy_index.add(database.numpy())
    _, noisy_indices = noisy_index.search(queries.numpy(), 12)
    _, expected_indices = knn(queries, database, 12, use_faiss=False)
    assert not np.array_equal(noisy_indices, expected_indices.numpy())  # the noise does reorder


def test_faiss_falls_back_when_its_candidates_cannot_settle_the_top_k(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatIP=ReversedTiesIndexFlatIP))
    database = torch.ones(200, 4) / 2  # 200 tied rows: faiss's 2k + 16 = 26 candidates are rows 199 .. 174
    queries = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    _, indices = knn(queries, database, 5)
    assert indices.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_real_faiss_gives_the_torch_result():
    pytest.importorskip("faiss")
    generator = torch.Generator().manual_seed(3)
    # Non-negative, like GeM descriptors: dense scores, where float32 rounding reorders neighbours.
    database = torch.nn.functional.normalize(torch.randn(5000, 256, generator=generator).relu(), dim=1)
    queries = torch.nn.functional.normalize(database[:200] + 0.05 * torch.rand(200, 256, generator=generator), dim=1)
    for k in (1, 10, 300):
        scores, indices = knn(queries, database, k, use_faiss=True)
        expected_scores, expected_indices = knn(queries, database, k, use_faiss=False)
        assert torch.equal(indices, expected_indices) and torch.equal(scores, expected_scores), k


@pytest.mark.cuda
def test_cuda_queries_match_cpu_search():
    queries, database = make_descriptors()
    expected_scores, expected_indices = knn(queries, database, 20, chunk_size=13, use_faiss=False)
    scores, indices = knn(queries.cuda(), database, 20, chunk_size=13)
    assert indices.is_cuda and torch.equal(indices.cpu(), expected_indices)
    torch.testing.assert_close(scores.cpu(), expected_scores, rtol=0, atol=1e-6)
    items = [np.arange(0, 203, 3)] * len(queries)
    cuda_positions = ranking_positions(queries.cuda(), database, items, chunk_size=13)
    for got, want in zip(cuda_positions, ranking_positions(queries, database, items, chunk_size=13)):
        assert np.array_equal(got, want)
