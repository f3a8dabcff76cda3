"""The k nearest rows of a descriptor collection for query rows: exact, or through a faiss index."""

import numpy as np
import torch

from .nn_search import knn_parts


class Searcher:
    """Searches `database` (a DescriptorCollection): exactly (torch on `device`, or with faiss choosing candidates:
    `use_faiss` as for knn), `chunk_size` rows at a time, one descriptor file at a time; or through `index`, a faiss
    index of the collection (approximate unless it is Flat)."""

    def __init__(self, database, *, device="cpu", use_faiss=None, chunk_size=4096, index=None):
        self.database, self.index = database, index
        self.device, self.use_faiss, self.chunk_size = torch.device(device), use_faiss, chunk_size

    def search(self, queries, k):
        """(scores, indices) numpy arrays, best first; an approximate index may give fewer than k (index -1)."""
        if self.index is not None:
            return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        scores, indices = knn_parts(
            torch.from_numpy(queries).to(self.device), self.database.parts(), k, self.chunk_size, self.use_faiss
        )
        return scores.cpu().numpy(), indices.cpu().numpy()
