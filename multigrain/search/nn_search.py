"""Exact nearest-neighbour search by inner product, scanning queries and database in chunks.

`knn` returns the top k of each query's ranking; `knn_parts` the same for a database read one part at a
time, `knn_blocks` for one searched in blocks of rows; `ranking_positions` says where given database rows
come in each query's full ranking, which is what average precision needs, without building it.
`approximate_index` builds a faiss index from an index-factory string for collections beyond exact search.
"""

import re

import numpy as np
import torch

# A faiss RuntimeError starts with the C++ function and file it comes from, and a failed check with its condition.
FAISS_LOCATION = re.compile(r"Error in .*? at \S+:\d+: ")
FAISS_FAILED_CHECK = re.compile(r"Error: '.*?' failed: ")


def knn(queries, database, k: int, chunk_size: int = 4096, use_faiss: bool | None = None):
    """The k database rows with the largest inner product with each query.

    queries (nq x d) and database (n x d): numpy arrays or torch tensors, searched as float32 (for
    L2-normalised descriptors this ranks like the L2 distance). Returns (scores, indices), both
    nq x k, best first, equal scores ordered by lower database index; numpy arrays when `queries`
    is a numpy array, else tensors on the queries' device.

    The torch search runs on the queries' device, moving database chunks there as they are
    scanned: only chunk_size queries x max(chunk_size, k) database rows are scored at a time.
    use_faiss: None uses faiss (IndexFlatIP) when it can be imported and the queries are on the
    CPU, True requires faiss, False always uses torch. Both give the same result: faiss's float32
    scores only choose candidates, which are scored again as the torch search scores them (see
    `_faiss_search`).
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        shapes = f"{tuple(queries.shape)} and {tuple(database.shape)}"
        raise ValueError(f"queries and database must be (n, d) with the same d, got {shapes}")
    if not 1 <= k <= len(database):
        raise ValueError(f"k must be between 1 and the database size {len(database)}, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    as_numpy = not isinstance(queries, torch.Tensor)
    queries = torch.as_tensor(queries, dtype=torch.float32).detach()
    database = torch.as_tensor(database, dtype=torch.float32).detach()

    faiss = _import_faiss(use_faiss, queries.device)
    if faiss is not None:
        keys = _faiss_search(faiss, queries, database, k, chunk_size)
    else:
        keys = _torch_search(queries, database, k, chunk_size)
    scores, indices = _decode(keys)
    if as_numpy:
        return scores.cpu().numpy(), indices.cpu().numpy()
    return scores, indices


def knn_parts(queries, database_parts, k: int, chunk_size: int = 4096, use_faiss: bool | None = None):
    """`knn` of `queries` against the concatenation of the database parts, holding one part at a time.

    database_parts: (offset of the part's first row, array) pairs in row order, such as
    `DescriptorCollection.parts()` yields. Returns (scores, indices) tensors on the queries' device, the
    same as `knn` on the concatenated database: a part's top k holds every row of the overall top k
    that it contains, and merging the tie-free keys keeps the order.
    """
    queries = torch.as_tensor(queries, dtype=torch.float32)
    best, num_rows = None, 0
    for offset, part in database_parts:
        part = torch.as_tensor(part, dtype=torch.float32)
        scores, indices = knn(queries, part, min(k, len(part)), chunk_size, use_faiss)
        keys = _encode(scores, indices + offset)
        if best is not None:
            keys = torch.cat([best, keys], dim=1)
        best = keys.topk(min(k, keys.shape[1]), dim=1).values
        num_rows += len(part)
    if not 1 <= k <= num_rows:
        raise ValueError(f"k must be between 1 and the database size {num_rows}, got {k}")
    return _decode(best)


def knn_blocks(queries, database, k: int, chunk_size: int = 4096, use_faiss: bool | None = None, block_rows=2**18):
    """`knn` with the database taken `block_rows` rows at a time (faiss copies what it searches, so its
    copy stays one block). Returns (scores, indices) tensors on the queries' device, as `knn_parts`."""
    blocks = ((start, database[start : start + block_rows]) for start in range(0, len(database), block_rows))
    return knn_parts(queries, blocks, k, chunk_size, use_faiss)


def faiss_reason(error) -> str:
    """What a faiss RuntimeError says, without the C++ function and file it comes from."""
    return FAISS_FAILED_CHECK.sub("", FAISS_LOCATION.sub("", " ".join(str(error).split())))


def check_index_factory(factory: str, dim: int, training_rows: int, nprobe: int | None = None):
    """Refuses (ValueError) an index-factory string that faiss cannot build for `dim`-d descriptors by inner
    product, an IVF index with more inverted lists than the `training_rows` it would be trained on (k-means needs
    a row per list), and an nprobe for an index without lists. Cheap: nothing is trained."""
    faiss = faiss_module()
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = faiss_reason(e)
        raise ValueError(f"faiss cannot build the index {factory!r} for {dim}-d descriptors: {reason}") from None
    try:
        lists = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        lists = None
    if nprobe is not None and lists is None:
        raise ValueError(f"the index {factory!r} has no inverted lists for nprobe to visit (it is not an IVF index)")
    if lists is not None and not 1 <= lists <= training_rows:
        raise ValueError(
            f"the index {factory!r} has {lists} inverted lists, and its training takes at least one descriptor a "
            f"list: it would be trained on {training_rows}"
        )


def approximate_index(factory: str, training_rows, database_parts, nprobe: int | None = None):
    """A faiss index by inner product from an index-factory string (e.g. "IVF1024,PQ32", "HNSW32"),
    trained on `training_rows` (a float32 sample of the database) and filled part by part. Search it
    with `index.search(queries, k)`; its scores and ranking are approximate. `nprobe` sets the number
    of inverted lists an IVF index visits per query. An index faiss cannot build, train or fill is a ValueError
    saying why (check_index_factory finds most before the training)."""
    faiss = faiss_module()
    training_rows = np.ascontiguousarray(training_rows, dtype=np.float32)
    check_index_factory(factory, training_rows.shape[1], len(training_rows), nprobe)
    index = faiss.index_factory(training_rows.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    try:
        if not index.is_trained:
            index.train(training_rows)
        for _, part in database_parts:
            index.add(np.ascontiguousarray(part, dtype=np.float32))
    except RuntimeError as e:
        raise ValueError(
            f"faiss cannot train or fill the index {factory!r} with {len(training_rows)} training descriptors: "
            f"{faiss_reason(e)}"
        ) from None
    set_nprobe(index, nprobe, f"the index {factory!r}")
    return index


def set_nprobe(index, nprobe, what):
    """Sets the number of inverted lists an IVF faiss index visits per query (nothing when nprobe is None)."""
    if nprobe is not None:
        try:
            faiss_module().ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        except RuntimeError:
            raise ValueError(f"{what} has no nprobe (it is not an IVF index)") from None


def faiss_module():
    """faiss, or an ImportError that says how to install it."""
    return _import_faiss(True, torch.device("cpu"))


def _torch_search(queries, database, k, chunk_size):
    device = queries.device
    # Database chunks of at least k rows keep the cost of merging the running top-k into each
    # chunk linear in the database size.
    database_chunk_size = max(chunk_size, k)
    keys = torch.empty((len(queries), k), dtype=torch.int64, device=device)
    for q_start in range(0, len(queries), chunk_size):
        query_chunk = queries[q_start : q_start + chunk_size].double()
        best = torch.empty((len(query_chunk), 0), dtype=torch.int64, device=device)
        for d_start in range(0, len(database), database_chunk_size):
            scores = _chunk_scores(query_chunk, database[d_start : d_start + database_chunk_size])
            positions = torch.arange(scores.shape[1], device=device).expand_as(scores)
            if k < scores.shape[1]:
                # Keep every score tied with the k-th best of the chunk (topk would drop an
                # arbitrary subset of them); the tie-free keys choose among them below.
                kth_best = scores.topk(k, dim=1).values[:, -1:]
                num_kept = int((scores >= kth_best).sum(dim=1).max())
                scores, positions = scores.topk(num_kept, dim=1)
            candidates = torch.cat([best, _encode(scores, positions + d_start)], dim=1)
            best = candidates.topk(k, dim=1).values
        keys[q_start : q_start + chunk_size] = best
    return keys


def ranking_positions(queries, database, items, chunk_size: int = 4096):
    """Where the database rows `items[i]` come in query i's ranking of the whole database.

    items: one sequence of database indices per query. Returns one int64 numpy array per query:
    the 0-based positions of its items in the ranking `knn` would return with k = len(database)
    (score descending, then lower index first), that is the number of rows ranked before each.
    Memory stays at chunk_size x chunk_size scores whatever the database size. The items' own
    scores are read from the same chunked products as the rest, so that they compare exactly: a
    first scan computes only the chunks that hold items.
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        shapes = f"{tuple(queries.shape)} and {tuple(database.shape)}"
        raise ValueError(f"queries and database must be (n, d) with the same d, got {shapes}")
    if len(items) != len(queries):
        raise ValueError(f"need one list of items per query: {len(items)} lists for {len(queries)} queries")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    queries = torch.as_tensor(queries, dtype=torch.float32).detach()
    database = torch.as_tensor(database, dtype=torch.float32).detach()
    device = queries.device
    items = [np.asarray(query_items, dtype=np.int64).reshape(-1) for query_items in items]
    width = max((len(query_items) for query_items in items), default=0)
    padded = np.full((len(items), width), -1, dtype=np.int64)
    for row, query_items in enumerate(items):
        if len(query_items) and (query_items.min() < 0 or query_items.max() >= len(database)):
            raise ValueError(f"items of query {row} must be database indices in [0, {len(database)})")
        padded[row, : len(query_items)] = query_items
    padded = torch.from_numpy(padded).to(device)

    positions = torch.zeros(padded.shape, dtype=torch.int64, device=device)
    for q_start in range(0, len(queries), chunk_size):
        query_chunk = queries[q_start : q_start + chunk_size].double()
        item_chunk = padded[q_start : q_start + chunk_size]
        # Padding gets the largest key: no row ranks before it, and it is dropped below.
        item_keys = torch.full(item_chunk.shape, torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
        for d_start in range(0, len(database), chunk_size):
            database_chunk = database[d_start : d_start + chunk_size]
            inside = (item_chunk >= d_start) & (item_chunk < d_start + len(database_chunk))
            if inside.any():
                rows, columns = inside.nonzero(as_tuple=True)
                indices = item_chunk[rows, columns]
                scores = _chunk_scores(query_chunk, database_chunk)[rows, indices - d_start]
                item_keys[rows, columns] = _encode(scores, indices)
        count = torch.zeros(item_chunk.shape, dtype=torch.int64, device=device)
        for d_start in range(0, len(database), chunk_size):
            scores = _chunk_scores(query_chunk, database[d_start : d_start + chunk_size])
            indices = torch.arange(d_start, d_start + scores.shape[1], device=device).expand_as(scores)
            keys = _encode(scores, indices).sort(dim=1).values
            # Rows ranked before an item are those with a larger key.
            count += scores.shape[1] - torch.searchsorted(keys, item_keys, right=True)
        positions[q_start : q_start + chunk_size] = count
    positions = positions.cpu().numpy()
    return [positions[row, : len(query_items)] for row, query_items in enumerate(items)]


def _chunk_scores(query_chunk, database_chunk):
    """float32 scores of float64 query rows against database rows.

    float32 matmul results depend on how BLAS tiles each chunk, so a pair could score differently
    in another chunking; float64 rounded to float32 does not (in practice), so chunked and full
    search agree exactly and duplicate rows tie exactly.
    """
    return (query_chunk @ database_chunk.to(query_chunk.device).double().T).float()


def _import_faiss(use_faiss, device):
    if use_faiss is False:
        return None
    try:
        import faiss
    except ImportError:
        if use_faiss:
            raise ImportError("use_faiss=True but faiss cannot be imported (pip install faiss-cpu)") from None
        return None
    if device.type != "cpu":
        if use_faiss:
            raise ValueError(f"use_faiss=True needs CPU inputs, got queries on {device}")
        return None
    return faiss


def _faiss_search(faiss, queries, database, k, chunk_size):
    """The torch search's result, with faiss choosing which rows to score exactly.

    faiss's float32 scores are off by at most `error`, so a row whose faiss score is below the
    k-th best faiss score minus 2 * error has k rows strictly better than it: the top k lies among
    the rows above that line, a prefix of faiss's list, which are scored again as the torch search
    scores them. A query whose line falls beyond the 2k + 16 rows faiss returned goes to the torch
    search instead.
    """
    num_rows, dim = database.shape
    index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(database.numpy()))
    faiss_scores, candidates = index.search(np.ascontiguousarray(queries.numpy()), min(num_rows, 2 * k + 16))
    faiss_scores, candidates = torch.from_numpy(faiss_scores), torch.from_numpy(candidates).long()
    # |float32 dot product - exact| <= dim * 2**-24 * |q| * |x|, whatever the summation order.
    error = dim * 2.0**-23 * queries.norm(dim=1, keepdim=True) * database.norm(dim=1).max()
    above_line = faiss_scores >= faiss_scores[:, k - 1 : k] - 2 * error
    num_exact = int(above_line.sum(dim=1).max())
    exact = torch.empty((len(queries), num_exact), dtype=torch.float32)
    queries_per_step = max(1, 2**24 // (num_exact * dim))  # 128 MiB of gathered float64 rows
    for start in range(0, len(queries), queries_per_step):
        block = slice(start, start + queries_per_step)
        rows = database[candidates[block, :num_exact]].double()
        exact[block] = torch.einsum("qd,qkd->qk", queries[block].double(), rows).float()
    keys = _encode(exact, candidates[:, :num_exact]).sort(dim=1, descending=True).values[:, :k]
    if num_rows > candidates.shape[1]:
        unsure = above_line[:, -1]
        if unsure.any():
            keys[unsure] = _torch_search(queries[unsure], database, k, chunk_size)
    return keys


def _encode(scores, indices):
    """One int64 per (float32 score, index < 2**32) pair, ordered by score, then by lower index.

    Sorting these keys has no ties, so the result does not depend on how topk or sort break them.
    """
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0, which it equals
    # The bits of a negative float grow with its magnitude: flip them so that the integers order
    # like the floats.
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    return (ordered << 32) - indices


def _decode(keys):
    """(scores, indices) back from the keys of `_encode`."""
    indices = (-keys) & 0xFFFFFFFF
    ordered = (keys + indices) >> 32
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).int()
    return bits.view(torch.float32), indices


def top_pairs(
    queries, database, max_results: int, query_offsets=None, chunk_size: int = 4096, use_faiss=None, block_rows=2**18
):
    """The `max_results` (query, database row) pairs with the largest q·x + query_offsets[q], over all queries
    together (not k per query), as `knn` scores them; pairs tied at the cut may go either way.

    Returns numpy (query indices, row indices, scores), best first (equal scores by lower query, then row;
    scores in float64: knn's float32 inner product plus the offset). Every query's top k comes from
    `knn` (same devices, chunking and use_faiss), starting at k = ⌈2·max_results / nq⌉: a query whose
    k-th score is below the max_results-th best score of all candidates has no other pair in the
    result; the others are searched again with 4k until none is left. The database is searched
    `block_rows` rows at a time (`knn_blocks`). Memory: the candidates (nq·k plus a few times
    max_results), one block and knn's chunks, never a query x database matrix.
    """
    if max_results < 1:
        raise ValueError(f"max_results must be positive, got {max_results}")
    queries = torch.as_tensor(queries, dtype=torch.float32).detach()
    num_queries, num_rows = len(queries), len(database)
    if not num_queries or not num_rows:
        raise ValueError(f"need at least one query and one database row, got {num_queries} and {num_rows}")
    offsets = np.zeros(num_queries) if query_offsets is None else np.asarray(query_offsets, dtype=np.float64)
    if offsets.shape != (num_queries,):
        raise ValueError(f"need one offset per query: got shape {offsets.shape} for {num_queries} queries")
    scores_of, rows_of = [None] * num_queries, [None] * num_queries
    pending, k = np.arange(num_queries), min(num_rows, -(-2 * max_results // max(num_queries, 1)))
    while len(pending):
        scores, rows = knn_blocks(queries[torch.from_numpy(pending)], database, k, chunk_size, use_faiss, block_rows)
        scores, rows = scores.cpu().numpy().astype(np.float64), rows.cpu().numpy()
        for position, query in enumerate(pending):
            scores_of[query], rows_of[query] = scores[position] + offsets[query], rows[position]
        if k == num_rows:
            break
        candidates = np.concatenate(scores_of)
        if len(candidates) < max_results:
            cut = -np.inf
        else:
            cut = np.partition(candidates, len(candidates) - max_results)[len(candidates) - max_results]
        # Rows a query has not returned score at most its k-th: they can only matter above the cut.
        pending = np.array([query for query in pending if scores_of[query][-1] > cut], dtype=np.int64)
        k = min(num_rows, 4 * k)
    scores = np.concatenate(scores_of)
    rows = np.concatenate(rows_of)
    query_indices = np.repeat(np.arange(num_queries), [len(query_scores) for query_scores in scores_of])
    order = np.lexsort((rows, query_indices, -scores))[:max_results]
    return query_indices[order], rows[order], scores[order]
