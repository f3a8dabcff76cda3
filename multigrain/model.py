import warnings
from collections import OrderedDict

import torch
import torchvision
from torch import nn

from .gem import GeM
from .timm_backbones import APPENDIX_E, build_timm_trunk, is_timm_name, timm_name

# Families whose torchvision head is "global pool -> (dropout) -> one Linear", so that the Linear can
# read the GeM vector directly.
SUPPORTED_PREFIXES = ("resnet", "resnext", "wide_resnet", "regnet_", "efficientnet_")
# The test resolution (largest image side) when neither the caller nor the model file gives one: the paper's s*.
DEFAULT_INPUT_SIZE = 500


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / (x.norm(p=2, dim=-1, keepdim=True) + eps)


def supported_models() -> list:
    return sorted(
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if name.startswith(SUPPORTED_PREFIXES)
    )


class MultiGrainNet(nn.Module):
    """A CNN trunk, GeM pooling, optionally a whitening, and the trunk's own linear classifier.

    forward(x) returns (logits, descriptor): the classifier applied to the embedding, and the retrieval
    descriptor l2n(embedding). The embedding is the raw pooled vector g, or, once whiten.py has set
    `whitening` (multigrain.whitening.Whitening), the whitened vector e that the rewritten classifier
    reads. The state_dict keys `features.*`, `pool.p`, `classifier.*` are those of the published
    MultiGrain checkpoints; `whitening.mean` and `whitening.projection` are their
    `whitening.pca.pca_m` and `whitening.pca.pca_P` (renamed by multigrain.storage.checkpoint).
    Setting `descriptor_dim` to D makes the descriptor l2n(embedding[:D]), the first D whitened components
    (largest variance first), while the classifier still reads the whole embedding.

    `class_names` (the classifier's classes in index order) and `input_size` (the test resolution s* the model
    was made for) are what its model file says about it (multigrain.storage.model_files sets them; None when
    unknown): plain attributes, not in the state_dict.
    """

    def __init__(
        self, features: nn.Module, classifier: nn.Linear, p: float = 3.0, dropout: float = 0.0, whitening=None
    ):
        super().__init__()
        self.features = features
        self.pool = GeM(p)
        self.whitening = whitening
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = classifier
        self.descriptor_dim = None
        self.class_names = None
        self.input_size = None

    @property
    def embedding_dim(self) -> int:
        return self.classifier.in_features

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The vector the classifier reads: g, or the whitened e."""
        g = self.pooled(x)
        return g if self.whitening is None else self.whitening(g)

    def forward(self, x: torch.Tensor):
        e = self.embedding(x)
        descriptor = e if self.descriptor_dim is None else e[:, : self.descriptor_dim]
        return self.classifier(self.dropout(e)), l2n(descriptor)


def _split_trunk(trunk: nn.Module):
    """The feature extractor, the final Linear and the head's dropout rate of a torchvision CNN."""
    if isinstance(trunk, torchvision.models.ResNet):
        children = OrderedDict((name, child) for name, child in trunk.named_children() if name not in ("avgpool", "fc"))
        return nn.Sequential(children), trunk.fc, 0.0
    if isinstance(trunk, torchvision.models.RegNet):
        return nn.Sequential(OrderedDict(stem=trunk.stem, trunk_output=trunk.trunk_output)), trunk.fc, 0.0
    if isinstance(trunk, torchvision.models.EfficientNet):
        dropout, linear = trunk.classifier
        return trunk.features, linear, dropout.p
    raise TypeError(f"unsupported trunk class {type(trunk).__name__}")


def check_model_name(name: str) -> None:
    """Refuses an architecture name that build_model does not know, without building it."""
    if is_timm_name(name):
        timm_name(name)
    elif name not in supported_models():
        raise ValueError(
            f"unsupported --model {name!r}; supported models: {', '.join(supported_models())}, "
            f"timm:NAME for a timm CNN, and {', '.join(APPENDIX_E)}"
        )


def build_model(name: str, *, weights=None, num_classes: int = 1000, pooling_exponent: float = 3.0):
    """A MultiGrainNet on a torchvision trunk `name`, or a timm trunk (timm:NAME, senet154, pnasnet5large;
    nasnetamobile is pretrainedmodels': multigrain.timm_backbones); `weights` is a torchvision weights name,
    or for those a weights file or a pretrained tag of timm's, whose classifier is replaced when
    num_classes (None: keep it) differs."""
    if is_timm_name(name):
        features, classifier, dropout = build_timm_trunk(name, weights, num_classes or 1000)
        if num_classes is not None and classifier.out_features != num_classes:
            classifier = classifier_layer(classifier.in_features, num_classes)
        return MultiGrainNet(features, classifier, p=pooling_exponent, dropout=dropout)
    check_model_name(name)
    if weights:
        try:
            trunk = torchvision.models.get_model(name, weights=weights)
        except (ValueError, KeyError):
            enum = torchvision.models.get_model_weights(name)
            valid = ", ".join(["DEFAULT"] + [f"{enum.__name__}.{w.name}" for w in enum])
            raise ValueError(f"--weights {weights!r} do not fit --model {name!r}; valid: {valid}") from None
    else:
        trunk = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)
    features, classifier, dropout = _split_trunk(trunk)
    if num_classes is not None and classifier.out_features != num_classes:
        classifier = classifier_layer(classifier.in_features, num_classes)
    return MultiGrainNet(features, classifier, p=pooling_exponent, dropout=dropout)


def classifier_layer(in_features, num_classes):
    """The classifier nn.Linear; with 0 classes (a model without classes) without the warning about its empty weight."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, num_classes)
