"""MultiGrain: one descriptor for classification and instance retrieval (Berman et al. 2019).

    import multigrain
    model = multigrain.load_model("whitened.pth")                 # a file or an http(s):// / file:// URL
    features = multigrain.descriptors(model, ["a.jpg", "b.jpg"])  # at the file's s* (model.input_size), else 500
    similarities = multigrain.compare(features, features)         # cosine similarities, (2, 2)
    probabilities, classes = multigrain.classify(model, ["a.jpg"], input_size=224, top_k=5)  # names, else indices

The training recipe (train.py, finetune_p.py, whiten.py, evaluate.py) lives in the repository, not in the package.
"""

from .inference.api import classify, compare, descriptors, eval_transform
from .model import MultiGrainNet, build_model
from .storage.model_files import load_model

__all__ = ["MultiGrainNet", "build_model", "classify", "compare", "descriptors", "eval_transform", "load_model"]
