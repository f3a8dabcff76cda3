import torch

from multigrain.distances import distances, squared_distances


def test_squared_distances_match_the_pairwise_differences():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    expected = ((x[:, None, :] - x[None, :, :]) ** 2).sum(dim=2)
    torch.testing.assert_close(squared_distances(x), expected, rtol=1e-5, atol=1e-5)


def test_distances_are_float32_non_negative_and_eps_keeps_the_gradient_finite():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).bfloat16()
    x = torch.cat([x, x[:1]]).requires_grad_()  # rows 0 and 4 coincide
    d = distances(x, eps=1e-8)
    assert d.dtype == torch.float32 and (d >= 0).all()
    torch.testing.assert_close(d, torch.cdist(x.float(), x.float()), rtol=1e-4, atol=1e-3)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
