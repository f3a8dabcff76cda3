"""The optimizer of a MultiGrain run: the model's parameters, normalisation layers with their own weight decay, and
the margin loss's β."""

import torch
from torch import nn


def build_optimizer(model, criterion, *, opt, lr, momentum, weight_decay, norm_weight_decay=None, beta_lr=1.0):
    """`opt` over the model's parameters (normalisation layers with their own weight decay) and β (learning
    rate lr × beta_lr, no weight decay)."""
    norm_classes = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    norm_params, other_params = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm_params if isinstance(module, norm_classes) else other_params).append(p)
    norm_wd = weight_decay if norm_weight_decay is None else norm_weight_decay
    groups = [
        {"params": other_params, "weight_decay": weight_decay},
        {"params": norm_params, "weight_decay": norm_wd},
        {"params": list(criterion.parameters()), "weight_decay": 0.0, "lr": lr * beta_lr},
    ]
    if opt.startswith("sgd"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=opt == "sgd_nesterov")
    if opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, alpha=0.9, eps=0.0316)
    return torch.optim.AdamW(groups, lr=lr)
