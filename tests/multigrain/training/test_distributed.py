import torch

from multigrain.training import distributed

# Several processes: tests/multigrain/test_ddp_equivalence.py gathers through MultiGrainLoss under torchrun.


def test_without_a_process_group_this_is_the_main_process_of_one():
    assert not distributed.is_initialized()
    assert (distributed.get_world_size(), distributed.get_rank(), distributed.is_main_process()) == (1, 0, True)


def test_reduce_sum_of_one_process_gives_the_values_as_floats():
    sums = distributed.reduce_sum([3, torch.tensor(2.5), 1e-3])
    assert sums == [3.0, 2.5, 1e-3] and all(type(value) is float for value in sums)


def test_gathers_of_one_process_return_the_tensor_and_its_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather(x) is x
    gathered = distributed.gather_with_gradient(x)
    gathered.sum().backward()
    assert gathered is x and torch.equal(x.grad, torch.ones(4, 3))
