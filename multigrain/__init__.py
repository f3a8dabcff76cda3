"""MultiGrain: one descriptor for classification and instance retrieval (Berman et al. 2019).

    import multigrain
    model = multigrain.load_model("whitened.pth")                 # a file or an http(s):// / file:// URL
    features = multigrain.descriptors(model, ["a.jpg", "b.jpg"])  # at the file's s* (model.input_size), else 500
    similarities = multigrain.compare(features, features)         # cosine similarities, (2, 2)
    probabilities, classes = multigrain.classify(model, ["a.jpg"], input_size=224, top_k=5)  # names, else indices

The training recipe (train.py, finetune_p.py, whiten.py, evaluate.py) lives in the repository, not in the package.
"""

import importlib

# The public API and its modules, imported on first use: a part of the package that needs no torch (the copy edits
# that tools/synthetic_data.py uses) is imported without it.
_API = {
    "MultiGrainNet": ".model",
    "build_model": ".model",
    "classify": ".inference.api",
    "compare": ".inference.api",
    "descriptors": ".inference.api",
    "eval_transform": ".inference.api",
    "load_model": ".storage.model_files",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name], __name__), name)
