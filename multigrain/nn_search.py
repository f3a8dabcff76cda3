"""Exact k-nearest-neighbour search by inner product, scanning queries and database in chunks."""
import numpy as np
import torch


def knn(queries, database, k: int, chunk_size: int = 4096, use_faiss: bool | None = None):
    """The k database rows with the largest inner product with each query.

    queries (nq x d) and database (n x d): numpy arrays or torch tensors, searched as float32 (for
    L2-normalised descriptors this ranks like the L2 distance). Returns (scores, indices), both
    nq x k, best first, equal scores ordered by lower database index; numpy arrays when `queries`
    is a numpy array, else tensors on the queries' device.

    The torch search runs on the queries' device, moving database chunks there as they are
    scanned: only chunk_size queries x max(chunk_size, k) database rows are scored at a time.
    use_faiss: None uses faiss (IndexFlatIP) when it can be imported and the queries are on the
    CPU, True requires faiss, False always uses torch. faiss scores in float32 arithmetic, so
    items whose scores differ by a rounding error may come in another order than with torch.
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
        keys = _faiss_search(faiss, queries, database, k)
    else:
        keys = _torch_search(queries, database, k, chunk_size)
    scores, indices = _decode(keys)
    if as_numpy:
        return scores.cpu().numpy(), indices.cpu().numpy()
    return scores, indices


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
            database_chunk = database[d_start : d_start + database_chunk_size].to(device).double()
            # float32 matmul results depend on how BLAS tiles each chunk, so a pair could score
            # differently in another chunking; float64 rounded to float32 does not (in practice),
            # so chunked and full search agree exactly and duplicate rows tie exactly.
            scores = (query_chunk @ database_chunk.T).float()
            positions = torch.arange(len(database_chunk), device=device).expand_as(scores)
            if k < len(database_chunk):
                # Keep every score tied with the k-th best of the chunk (topk would drop an
                # arbitrary subset of them); the tie-free keys choose among them below.
                kth_best = scores.topk(k, dim=1).values[:, -1:]
                num_kept = int((scores >= kth_best).sum(dim=1).max())
                scores, positions = scores.topk(num_kept, dim=1)
            candidates = torch.cat([best, _encode(scores, positions + d_start)], dim=1)
            best = candidates.topk(k, dim=1).values
        keys[q_start : q_start + chunk_size] = best
    return keys


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


def _faiss_search(faiss, queries, database, k):
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database.cpu().numpy()))
    scores, indices = index.search(np.ascontiguousarray(queries.numpy()), k)
    # Re-sort so that equal scores come in the same order as in the torch search.
    keys = _encode(torch.from_numpy(scores), torch.from_numpy(indices))
    return keys.sort(dim=1, descending=True).values


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
