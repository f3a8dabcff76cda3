import math

import torch
from torch import nn
from torch.nn import functional as F


class GeM(nn.Module):
    """Generalised-mean pooling: (mean over H x W of clamp(x, eps)^p)^(1/p), one value per channel.

    p is a buffer during training (a fixed value saved in the state_dict as `p`) and becomes a
    parameter with `make_p_learnable()` for the p* fine-tuning. p = 1 takes the exact average-pool
    path and p = inf is max pooling. The pooling always runs in float32, also under autocast:
    x^p overflows in float16 for p >= 3.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        p = float(p)
        if not p > 0:
            raise ValueError(f"GeM pooling exponent must be > 0, got {p}")
        self.eps = eps
        self.register_buffer("p", torch.tensor(p))
        self._fixed_p = p  # host copy of the buffer: branching on it needs no device sync
        self.p_learnable = False  # a plain bool: torch.jit.script sees a parameter and a buffer as one Tensor type

    def set_p(self, p: float) -> None:
        p = float(p)
        if not p > 0:
            raise ValueError(f"GeM pooling exponent must be > 0, got {p}")
        with torch.no_grad():
            self.p.fill_(p)
        self._fixed_p = p

    def make_p_learnable(self) -> None:
        if math.isinf(self._fixed_p):
            raise ValueError("a GeM exponent of inf (max pooling) cannot be learned")
        p = self.p.detach().clone()
        del self.p
        self.p = nn.Parameter(p)
        self.p_learnable = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "p" in state_dict:
            self._fixed_p = float(state_dict[prefix + "p"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # constant device types, as torch.jit.script needs: the recipe runs on CUDA and on the CPU
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            x = x.float()
            if not self.p_learnable:
                if self._fixed_p == 1.0:
                    return F.adaptive_avg_pool2d(x, 1).flatten(1)
                if math.isinf(self._fixed_p):
                    return F.adaptive_max_pool2d(x, 1).flatten(1)
            return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        kind = "learnable" if self.p_learnable else "fixed"
        return f"p={float(self.p.detach()):.4g} ({kind}), eps={self.eps}"
