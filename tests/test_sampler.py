from collections import Counter

import pytest
import torch

from sampler import DecodeOnceBatchSampler, RASampler


def epoch_per_rank(dataset_size, num_replicas, epoch=0, **kwargs):
    per_rank = []
    for rank in range(num_replicas):
        sampler = RASampler(dataset_size, num_replicas=num_replicas, rank=rank, **kwargs)
        sampler.set_epoch(epoch)
        per_rank.append(list(sampler))
    return per_rank


def interleave(per_rank):
    """Rebuild the global order from the rank-local lists (rank r holds positions r, r + R, ...)."""
    return [index for position in zip(*per_rank) for index in position]


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_all_ranks_get_the_announced_number_of_samples(num_replicas):
    per_rank = epoch_per_rank(10, num_replicas, reps=3, epoch_len_factor=2.0)
    expected = -(-20 // num_replicas)
    assert [len(indices) for indices in per_rank] == [expected] * num_replicas
    sampler = RASampler(10, num_replicas=num_replicas, rank=0, reps=3, epoch_len_factor=2.0)
    assert len(sampler) == expected


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
@pytest.mark.parametrize("reps", [1, 2, 3])
def test_factor_equal_to_reps_shows_every_image_reps_times(num_replicas, reps):
    dataset_size = 12
    per_rank = epoch_per_rank(dataset_size, num_replicas, reps=reps, epoch_len_factor=float(reps))
    union = Counter(index for indices in per_rank for index in indices)
    assert union == {index: reps for index in range(dataset_size)}


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_copies_are_consecutive_in_the_global_order(num_replicas):
    reps = 3
    global_order = interleave(epoch_per_rank(12, num_replicas, reps=reps, epoch_len_factor=3.0))
    blocks = [global_order[i : i + reps] for i in range(0, len(global_order), reps)]
    assert all(len(set(block)) == 1 for block in blocks)
    assert sorted(block[0] for block in blocks) == list(range(12))


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_consecutive_copies_land_on_different_ranks(num_replicas):
    reps = 3
    per_rank = epoch_per_rank(12, num_replicas, reps=reps, epoch_len_factor=3.0)
    global_order = interleave(per_rank)
    rank_of_position = [position % num_replicas for position in range(len(global_order))]
    for start in range(0, len(global_order), reps):
        ranks = rank_of_position[start : start + reps]
        assert all(a != b for a, b in zip(ranks, ranks[1:]))
        if num_replicas >= reps:
            assert len(set(ranks)) == reps
    # With as many ranks as copies, every rank sees each image exactly once.
    if num_replicas == reps:
        assert all(sorted(indices) == list(range(12)) for indices in per_rank)


def test_single_process_keeps_copies_next_to_each_other():
    sampler = RASampler(7, num_replicas=1, rank=0, reps=3, epoch_len_factor=3.0)
    indices = list(sampler)
    assert len(indices) == 21
    assert all(indices[i] == indices[i + 1] == indices[i + 2] for i in range(0, 21, 3))
    assert len({indices[i] for i in range(0, 21, 3)}) == 7


def test_global_batch_made_of_rank_batches_holds_the_copies_together():
    num_replicas, batch_size, reps = 3, 4, 3
    per_rank = epoch_per_rank(20, num_replicas, reps=reps, epoch_len_factor=3.0)
    global_order = interleave(per_rank)
    step_size = num_replicas * batch_size
    for step in range(len(per_rank[0]) // batch_size):
        global_batch = [i for indices in per_rank for i in indices[step * batch_size : (step + 1) * batch_size]]
        assert sorted(global_batch) == sorted(global_order[step * step_size : (step + 1) * step_size])


def test_same_seed_and_epoch_give_the_same_order_and_another_epoch_differs():
    first = epoch_per_rank(50, 2, epoch=4, seed=7, reps=3, epoch_len_factor=2.0)
    again = epoch_per_rank(50, 2, epoch=4, seed=7, reps=3, epoch_len_factor=2.0)
    next_epoch = epoch_per_rank(50, 2, epoch=5, seed=7, reps=3, epoch_len_factor=2.0)
    other_seed = epoch_per_rank(50, 2, epoch=4, seed=8, reps=3, epoch_len_factor=2.0)
    assert first == again
    assert first != next_epoch
    assert first != other_seed


def test_iterating_twice_without_set_epoch_repeats_the_epoch():
    sampler = RASampler(30, num_replicas=1, rank=0, seed=3)
    assert list(sampler) == list(sampler)


def test_tiny_dataset_gives_a_non_empty_epoch():
    per_rank = epoch_per_rank(5, 3, reps=3, epoch_len_factor=1.0)
    assert [len(indices) for indices in per_rank] == [2, 2, 2]
    assert all(0 <= index < 5 for indices in per_rank for index in indices)
    assert len(list(RASampler(1, num_replicas=4, rank=3, reps=3))) == 1


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_factor_two_gives_twice_the_dataset_in_all(num_replicas):
    per_rank = epoch_per_rank(12, num_replicas, reps=3, epoch_len_factor=2.0)
    assert sum(len(indices) for indices in per_rank) == 24


def test_epoch_longer_than_one_repeated_permutation_appends_more():
    reps, dataset_size = 2, 5
    sampler = RASampler(dataset_size, num_replicas=1, rank=0, reps=reps, epoch_len_factor=5.0, seed=1)
    indices = list(sampler)
    assert len(indices) == 25
    first_round, second_round = indices[:10], indices[10:20]
    assert sorted(first_round[::2]) == list(range(dataset_size))
    assert sorted(second_round[::2]) == list(range(dataset_size))
    assert all(indices[i] == indices[i + 1] for i in range(0, 24, 2))


def test_no_shuffle_gives_repeated_arange():
    sampler = RASampler(4, num_replicas=1, rank=0, shuffle=False, reps=2, epoch_len_factor=3.0)
    assert list(sampler) == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1]
    rank1 = RASampler(4, num_replicas=2, rank=1, shuffle=False, reps=3, epoch_len_factor=3.0)
    assert list(rank1) == [0, 1, 1, 2, 3, 3]


def test_defaults_without_process_group_are_single_process():
    assert not torch.distributed.is_initialized()
    sampler = RASampler(6)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)
    assert len(sampler) == 6


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(dataset_size=10, reps=0), "reps"),
        (dict(dataset_size=10, epoch_len_factor=0.0), "epoch_len_factor"),
        (dict(dataset_size=10, epoch_len_factor=-1.0), "epoch_len_factor"),
        (dict(dataset_size=0), "dataset_size"),
        (dict(dataset_size=10, num_replicas=2, rank=2), "rank"),
        (dict(dataset_size=10, num_replicas=2, rank=-1), "rank"),
        (dict(dataset_size=10, num_replicas=0, rank=0), "num_replicas"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RASampler(**kwargs)


def expand(batch):
    return [index for index, copies in batch for _ in range(copies)]


def ra_batches(dataset_size, num_replicas, rank, batch_size, drop_last, **kwargs):
    sampler = RASampler(dataset_size, num_replicas=num_replicas, rank=rank, **kwargs)
    indices = list(sampler)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return batches[:-1] if drop_last and len(batches[-1]) < batch_size else batches


def decode_once_batches(dataset_size, num_replicas, rank, batch_size, drop_last, **kwargs):
    sampler = RASampler(dataset_size, num_replicas=num_replicas, rank=rank, **kwargs)
    return list(DecodeOnceBatchSampler(sampler, batch_size, drop_last))


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("batch_size", [6, 7, 64])
def test_single_process_batches_equal_the_ra_sampler_batches(batch_size, drop_last):
    kwargs = dict(reps=3, epoch_len_factor=2.0, seed=3)
    expected = ra_batches(25, 1, 0, batch_size, drop_last, **kwargs)
    batches = decode_once_batches(25, 1, 0, batch_size, drop_last, **kwargs)
    assert [expand(batch) for batch in batches] == expected
    assert len(DecodeOnceBatchSampler(RASampler(25, **kwargs), batch_size, drop_last)) == len(expected)


@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize("batch_size", [6, 5])
def test_every_global_batch_holds_the_samples_of_the_ra_sampler(num_replicas, batch_size):
    kwargs = dict(reps=3, epoch_len_factor=3.0, seed=1)
    per_rank = [decode_once_batches(20, num_replicas, r, batch_size, False, **kwargs) for r in range(num_replicas)]
    reference = [ra_batches(20, num_replicas, r, batch_size, False, **kwargs) for r in range(num_replicas)]
    assert [len(batches) for batches in per_rank] == [len(batches) for batches in reference]
    for step in range(len(reference[0])):
        ours = Counter(i for batches in per_rank for i in expand(batches[step]))
        theirs = Counter(i for batches in reference for i in batches[step])
        assert ours == theirs
        assert len({len(expand(batches[step])) for batches in per_rank}) == 1
    # epoch_len_factor == reps: every image exactly reps times in the epoch.
    epoch = Counter(i for batches in per_rank for batch in batches for i in expand(batch))
    assert epoch == {index: 3 for index in range(20)}


def test_copies_of_an_image_stay_together_when_batches_hold_whole_groups():
    per_rank = [decode_once_batches(12, 2, r, 6, True, reps=3, epoch_len_factor=3.0) for r in range(2)]
    pairs = [pair for batches in per_rank for batch in batches for pair in batch]
    assert sorted(index for index, _ in pairs) == list(range(12))
    assert all(copies == 3 for _, copies in pairs)


def test_decode_once_set_epoch_changes_the_order():
    batch_sampler = DecodeOnceBatchSampler(RASampler(30, reps=3, epoch_len_factor=3.0), 9, True)
    first = list(batch_sampler)
    batch_sampler.set_epoch(1)
    assert list(batch_sampler) != first


def test_decode_once_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="RASampler"):
        DecodeOnceBatchSampler(torch.utils.data.SequentialSampler(range(4)), 2, True)
    with pytest.raises(ValueError, match="batch_size"):
        DecodeOnceBatchSampler(RASampler(4), 0, True)
