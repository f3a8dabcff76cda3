"""Trunks from timm and Cadene's pretrainedmodels (optional extras, imported only when one is asked for).

`timm:NAME` is any timm CNN whose head is a global pooling followed by one Linear; GeM replaces the
pooling as for the torchvision trunks. The state_dict of its MultiGrainNet reads `features.base_net.<timm
key>` (the timm network without its classifier), `pool.p`, `classifier.*`.

The appendix-E architectures of the paper have the names and the state_dict layouts of the published
files (nasnetamobile-finetune350.pth, senet154-finetune400.pth, pnasnet5large-finetune500.pth), which were
built on Cadene's pretrainedmodels; timm ports the same networks with the same module names:

- `senet154`: timm's legacy_senet154; keys `features.layer0.*` ... `features.layer4.*`, `classifier.*`.
- `pnasnet5large`: timm's PNASNet5Large with Cadene's padding (symmetric, and the shifted "zero_pad" of
  cell_4) instead of timm's TF "same" padding, and every cell cropping its branches to their common
  top-left size before each sum and the concatenation, as the published code patched it, so that any
  input size works. Keys `features.0.base_net.<module>` for the whole network, the unused
  `features.0.base_net.last_linear.*` included, next to `classifier.*`.
- `nasnetamobile`: timm has no NASNet-A-Mobile, so this is Cadene's own pretrainedmodels NASNetAMobile (the
  network the published file was built on), its cells' forward replaced by ours, which crops the branches
  as above. Keys `features.0.base_net.<module>` (last_linear included), `classifier.*`; `features` is its
  `features()`, then a ReLU, as in the published file.
"""

import copy
import os
import types
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

PREFIX = "timm:"
# The timm name of each appendix-E architecture; None: not in timm, built on pretrainedmodels.
APPENDIX_E = {"senet154": "legacy_senet154", "pnasnet5large": "pnasnet5large", "nasnetamobile": None}


def is_timm_name(name) -> bool:
    return isinstance(name, str) and (name.startswith(PREFIX) or name in APPENDIX_E)


def _import_timm():
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need the timm package: pip install timm") from None
    return timm


def _import_pretrainedmodels():
    try:
        import pretrainedmodels
    except ImportError:
        raise ValueError(
            "--model nasnetamobile (NASNet-A-Mobile, which timm lacks) needs Cadene's pretrainedmodels, an optional "
            "extra: pip install pretrainedmodels six"
        ) from None
    return pretrainedmodels


def timm_name(name) -> str:
    """The timm model name of `name` (timm:NAME or an appendix-E name), refused when timm lacks it;
    for nasnetamobile, "nasnetamobile" once pretrainedmodels imports."""
    if APPENDIX_E.get(name, "") is None:
        _import_pretrainedmodels()
        return name
    timm = _import_timm()
    model_name = APPENDIX_E.get(name) or name[len(PREFIX) :]
    if model_name not in timm.list_models():
        close = timm.list_models(f"*{model_name[:4]}*")[:20] if model_name else []
        raise ValueError(
            f"unknown --model {name!r}: timm has no model {model_name!r}"
            + (f"; similar timm models: {', '.join(close)}" if close else "")
            + f"; appendix-E models: {', '.join(APPENDIX_E)}"
        )
    return model_name


def _pretrained_file(model_name, tag):
    """The cached file of timm's pretrained weights MODEL.TAG; never downloads."""
    timm = _import_timm()
    valid = timm.list_pretrained(f"{model_name}.*")
    if f"{model_name}.{tag}" not in valid:
        tags = ", ".join(name.split(".", 1)[1] for name in valid) or "none"
        raise ValueError(
            f"--weights {tag!r} is neither a file nor a pretrained tag of timm's {model_name} (tags: {tags})"
        )
    cfg = timm.models.get_pretrained_cfg(f"{model_name}.{tag}")
    candidates = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for file_name in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(cfg.hf_hub_id, file_name)
            candidates.append(cached if isinstance(cached, str) else None)
    if cfg.url:
        candidates.append(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url)))
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise ValueError(
        f"timm's pretrained weights {model_name}.{tag} are not in the local cache (nothing is downloaded here): "
        f"fetch them once with python -c \"import timm; timm.create_model('{model_name}.{tag}', pretrained=True)\", "
        "or pass the weights file to --weights"
    )


def read_weights(path) -> dict:
    """A state_dict of tensors from a safetensors file or a torch file (read with weights_only=True)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--weights {path} cannot be read as a torch state_dict: {e}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"--weights {path} is not a state_dict of tensors")
    return state


def _crop_to(tensor, height, width):
    return tensor if tensor.shape[-2:] == (height, width) else tensor[..., :height, :width]


def _common_crops(tensors):
    height = min(t.shape[-2] for t in tensors)
    width = min(t.shape[-1] for t in tensors)
    return [_crop_to(t, height, width) for t in tensors]


def _crop_sum(*tensors):
    return sum(_common_crops(tensors))


def _crop_cat(tensors):
    return torch.cat(_common_crops(tensors), 1)


def _cropping_cell_forward(cell, x_left, x_right):
    """timm's CellBase.cell_forward, with the branches cropped to their common top-left size before each
    sum and the concatenation (the published code's patch of Cadene's PNASNet)."""
    comb_0 = _crop_sum(cell.comb_iter_0_left(x_left), cell.comb_iter_0_right(x_left))
    comb_1 = _crop_sum(cell.comb_iter_1_left(x_right), cell.comb_iter_1_right(x_right))
    comb_2 = _crop_sum(cell.comb_iter_2_left(x_right), cell.comb_iter_2_right(x_right))
    comb_3 = _crop_sum(cell.comb_iter_3_left(comb_2), cell.comb_iter_3_right(x_right))
    right_4 = x_right if cell.comb_iter_4_right is None else cell.comb_iter_4_right(x_right)
    comb_4 = _crop_sum(cell.comb_iter_4_left(x_left), right_4)
    return _crop_cat([comb_0, comb_1, comb_2, comb_3, comb_4])


def _shifted(module, padding):
    """Cadene's zero_pad of a stride-2 op: pad one more row and column at the top-left, run, drop the first
    output row and column. With stride 2 this is the op on (padding - 1) rows above, `padding` below."""
    module.padding = (0, 0)
    value = float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0
    module.register_forward_pre_hook(
        lambda _, args: (F.pad(args[0], (padding - 1, padding, padding - 1, padding), value=value),)
    )


def _cadene_pnasnet(net):
    """Cadene's padding and the published cropping on timm's PNASNet5Large built with symmetric padding."""
    for module in net.modules():
        if type(module).__name__ in ("Cell", "CellStem0"):
            module.cell_forward = types.MethodType(_cropping_cell_forward, module)
    cell = net.cell_4
    for branch in (
        cell.comb_iter_0_left,
        cell.comb_iter_1_left,
        cell.comb_iter_2_left,
        cell.comb_iter_2_right,
        cell.comb_iter_4_left,
    ):
        conv = branch.separable_1.depthwise_conv2d
        _shifted(conv, conv.kernel_size[0] // 2)
    for pool in (cell.comb_iter_0_right, cell.comb_iter_1_right, cell.comb_iter_3_right):
        _shifted(pool, 1)
    return net


def _nasnet_factorized_reduction(cell, x):
    """NASNet's halving of x in FirstCell and CellStem1: two strided paths one pixel apart, concatenated."""
    x = cell.relu(x)
    shifted = cell.path_2.pad(x)[:, :, 1:, 1:]
    return cell.final_path_bn(_crop_cat([cell.path_1(x), cell.path_2.conv(cell.path_2.avgpool(shifted))]))


def _nasnet_reduction_combs(cell, a, b):
    """The combinations of NASNet's reduction cells (CellStem0, CellStem1, ReductionCell0 and 1) on their
    inputs `a` (of comb_iter_0_left) and `b` (of comb_iter_0_right), cropped before each sum and the concatenation."""
    comb_0 = _crop_sum(cell.comb_iter_0_left(a), cell.comb_iter_0_right(b))
    comb_1 = _crop_sum(cell.comb_iter_1_left(a), cell.comb_iter_1_right(b))
    comb_2 = _crop_sum(cell.comb_iter_2_left(a), cell.comb_iter_2_right(b))
    comb_3 = _crop_sum(cell.comb_iter_3_right(comb_0), comb_1)
    comb_4 = _crop_sum(cell.comb_iter_4_left(comb_0), cell.comb_iter_4_right(a))
    return _crop_cat([comb_1, comb_2, comb_3, comb_4])


def _nasnet_normal_combs(cell, left, right):
    """The combinations of NASNet's normal cells (FirstCell, NormalCell), cropped likewise."""
    comb_0 = _crop_sum(cell.comb_iter_0_left(right), cell.comb_iter_0_right(left))
    comb_1 = _crop_sum(cell.comb_iter_1_left(left), cell.comb_iter_1_right(left))
    comb_2 = _crop_sum(cell.comb_iter_2_left(right), left)
    comb_3 = _crop_sum(cell.comb_iter_3_left(left), cell.comb_iter_3_right(left))
    comb_4 = _crop_sum(cell.comb_iter_4_left(right), right)
    return _crop_cat([left, comb_0, comb_1, comb_2, comb_3, comb_4])


def _cell_stem_0_forward(cell, x):
    return _nasnet_reduction_combs(cell, cell.conv_1x1(x), x)


def _cell_stem_1_forward(cell, x_conv0, x_stem_0):
    return _nasnet_reduction_combs(cell, cell.conv_1x1(x_stem_0), _nasnet_factorized_reduction(cell, x_conv0))


def _reduction_cell_forward(cell, x, x_prev):
    return _nasnet_reduction_combs(cell, cell.conv_1x1(x), cell.conv_prev_1x1(x_prev))


def _first_cell_forward(cell, x, x_prev):
    return _nasnet_normal_combs(cell, _nasnet_factorized_reduction(cell, x_prev), cell.conv_1x1(x))


def _normal_cell_forward(cell, x, x_prev):
    return _nasnet_normal_combs(cell, cell.conv_prev_1x1(x_prev), cell.conv_1x1(x))


# pretrainedmodels' NASNet-A-Mobile cell classes and the cropping forward that replaces theirs.
NASNET_CELL_FORWARDS = {
    "CellStem0": _cell_stem_0_forward,
    "CellStem1": _cell_stem_1_forward,
    "ReductionCell0": _reduction_cell_forward,
    "ReductionCell1": _reduction_cell_forward,
    "FirstCell": _first_cell_forward,
    "NormalCell": _normal_cell_forward,
}


def _cropping_nasnet_mobile(num_classes):
    """pretrainedmodels' NASNetAMobile whose cells crop their branches, so that any input size works."""
    net = _import_pretrainedmodels().models.nasnet_mobile.NASNetAMobile(num_classes=num_classes)
    for module in net.modules():
        forward = NASNET_CELL_FORWARDS.get(type(module).__name__)
        if forward is not None:
            module.forward = types.MethodType(forward, module)
    return net


class ForwardFeatures(nn.Module):
    """The feature map of a network, its `method` (timm's forward_features, pretrainedmodels' features);
    `base_net` is the whole network."""

    def __init__(self, net, method="forward_features"):
        super().__init__()
        self.base_net = net
        self.method = method

    def forward(self, x):
        return getattr(self.base_net, self.method)(x)


def _check_head(net, name):
    """Refuses a network whose head is not "global average pooling, then one Linear"."""
    classifier = net.get_classifier()
    message = f"--model {name}: its head is not a global pooling followed by one Linear, so GeM cannot replace it"
    if not isinstance(classifier, nn.Linear) or getattr(net, "num_features", None) != classifier.in_features:
        raise ValueError(message)
    if classifier.weight.is_meta:  # a build for the shapes only (ModelFile.check_fits); the real build checks this
        return
    feature_map = torch.rand(2, classifier.in_features, 3, 2)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            pooled = net.forward_head(feature_map, pre_logits=True)
    except Exception:
        raise ValueError(message) from None
    finally:
        net.train(was_training)
    if pooled.shape != (2, classifier.in_features) or not torch.allclose(pooled, feature_map.mean((2, 3)), atol=1e-6):
        raise ValueError(message)


def _load_weights(net, weights, name, model_name):
    """Loads --weights (a file, or a pretrained tag read from timm's cache) into the timm network `net`,
    whose classifier takes the weights' number of classes."""
    path = weights if os.path.isfile(weights) else _pretrained_file(model_name, weights)
    state = read_weights(path)
    head = next(key for key, module in net.named_modules() if module is net.get_classifier())
    if f"{head}.weight" in state and state[f"{head}.weight"].shape[0] != net.get_classifier().out_features:
        net.reset_classifier(state[f"{head}.weight"].shape[0])
    _load_fitting(net, state, weights, name, f"timm's {model_name}")


def _load_fitting(net, state, weights, name, network):
    """Loads the state_dict `state` of --weights into `net`, refused with the keys that do not fit."""
    expected = net.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or misshapen:
        raise ValueError(
            f"--weights {weights} do not fit --model {name} ({network}): "
            f"missing {len(missing)} keys ({', '.join(missing[:5])}), "
            f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:5])}), "
            f"{len(misshapen)} of another shape ({', '.join(misshapen[:5])})"
        )
    net.load_state_dict(state)


def build_timm_trunk(name, weights=None, num_classes=1000):
    """(features, classifier, dropout) of the timm model `name` (timm:NAME or an appendix-E name;
    nasnetamobile is pretrainedmodels').

    `weights`: a local file (safetensors or torch state_dict of the timm model, or of pretrainedmodels'
    for nasnetamobile) or a pretrained tag of timm's, read from its cache; the classifier then has the
    weights' number of classes.
    """
    model_name = timm_name(name)
    if name == "nasnetamobile":
        return _nasnet_mobile_trunk(weights, num_classes)
    timm = _import_timm()
    if name == "pnasnet5large":
        net = timm.models.pnasnet.PNASNet5Large(num_classes=num_classes, pad_type="")  # symmetric, as Cadene's
    else:
        net = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    _check_head(net, name)
    if weights:
        _load_weights(net, weights, name, model_name)
    classifier = net.get_classifier()
    dropout = float(getattr(net, "drop_rate", 0.0) or 0.0)
    if name == "senet154":
        trunk = OrderedDict((key, child) for key, child in net.named_children() if key.startswith(("layer", "pool0")))
        return nn.Sequential(trunk), classifier, dropout
    if name == "pnasnet5large":
        # The published files keep the whole network, its own last_linear included, next to `classifier`.
        # timm's forward_features ends with the ReLU that the published `features.1` applied.
        return nn.Sequential(ForwardFeatures(_cadene_pnasnet(net))), copy.deepcopy(classifier), dropout
    net.reset_classifier(0)
    return ForwardFeatures(net), classifier, dropout


def _nasnet_mobile_trunk(weights, num_classes):
    """build_timm_trunk for nasnetamobile; `weights`: a file of pretrainedmodels' NASNetAMobile state_dict."""
    net = _cropping_nasnet_mobile(num_classes)
    if weights:
        if not os.path.isfile(weights):
            raise ValueError(f"--weights {weights}: no such file (nasnetamobile takes a pretrainedmodels state_dict)")
        state = read_weights(weights)
        head = state.get("last_linear.weight")
        if head is not None and head.shape[0] != net.last_linear.out_features:
            net.last_linear = nn.Linear(net.last_linear.in_features, head.shape[0])
        _load_fitting(net, state, weights, "nasnetamobile", "pretrainedmodels' nasnetamobile")
    # As in the published file: the whole network, its own last_linear included, next to `classifier`.
    features = nn.Sequential(ForwardFeatures(net, "features"), nn.ReLU())
    return features, copy.deepcopy(net.last_linear), net.dropout.p
