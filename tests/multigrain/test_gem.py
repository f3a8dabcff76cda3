import math

import pytest
import torch
from torch.nn import functional as F

from multigrain.gem import GeM


def direct_gem(x, p, eps=1e-6):
    out = torch.empty(x.shape[:2], dtype=torch.float64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            values = x[n, c].double().clamp(min=eps).flatten()
            out[n, c] = (values**p).mean() ** (1.0 / p)
    return out


def test_p1_is_average_pooling_exactly():
    x = torch.randn(2, 5, 7, 6)  # negative values too: the p = 1 path has no clamp
    assert torch.equal(GeM(1.0)(x), F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_p_inf_is_max_pooling():
    x = torch.rand(2, 5, 7, 6)
    assert torch.equal(GeM(math.inf)(x), F.adaptive_max_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("p", [2.0, 3.0, 4.5])
def test_matches_direct_formula(p):
    x = torch.rand(3, 4, 5, 5) * 3
    torch.testing.assert_close(GeM(p)(x).double(), direct_gem(x, p), rtol=1e-5, atol=1e-6)


def test_large_p_tends_to_max():
    x = torch.rand(2, 3, 4, 4) + 0.1
    torch.testing.assert_close(GeM(200.0)(x), x.amax(dim=(-2, -1)), rtol=2e-2, atol=0)


def test_p_is_a_buffer_in_the_state_dict_and_loads():
    pool = GeM(3.0)
    assert "p" in dict(pool.named_buffers()) and len(list(pool.parameters())) == 0
    other = GeM(1.0)
    other.load_state_dict(pool.state_dict())
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(other(x), pool(x))  # the host copy of p followed the loaded buffer
    other.load_state_dict({"p": torch.tensor(1.0)})
    assert torch.equal(other(x), F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_learnable_p_gradient_matches_finite_differences():
    x = torch.rand(2, 3, 4, 4) + 0.05
    pool = GeM(3.0)
    pool.make_p_learnable()
    assert [name for name, _ in pool.named_parameters()] == ["p"]
    pool(x).sum().backward()
    analytic = pool.p.grad.item()

    def value(p):
        return direct_gem(x, p).sum().item()

    h = 1e-5
    numeric = (value(3.0 + h) - value(3.0 - h)) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-3)
    assert "p" in pool.state_dict()


def test_runs_in_float32_under_autocast():
    x = torch.rand(2, 3, 4, 4, dtype=torch.bfloat16) * 60  # 60^3 overflows float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = GeM(3.0)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), direct_gem(x.float(), 3.0), rtol=1e-5, atol=1e-5)


def test_bad_exponents():
    with pytest.raises(ValueError, match="> 0"):
        GeM(0.0)
    with pytest.raises(ValueError, match="inf"):
        GeM(math.inf).make_p_learnable()


@pytest.mark.parametrize("p", [1.0, 3.0, math.inf, "learnable"])
def test_torch_jit_script_gives_the_eager_result(p):
    pool = GeM(3.0 if p == "learnable" else p)
    if p == "learnable":
        pool.make_p_learnable()
    scripted = torch.jit.script(pool)
    x = torch.randn(2, 3, 5, 7)  # negative values: p = 1 and inf take their own paths, without the clamp
    assert torch.equal(scripted(x), pool(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scripted(x.bfloat16() * 60).dtype == torch.float32
    if p == "learnable":
        scripted(x.abs()).sum().backward()
        assert scripted.p.grad is not None
