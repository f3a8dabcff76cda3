import numpy as np
import pytest

from multigrain.search import keep
from multigrain.search.collection_images import ImageFacts

NAMES = ["a/1.jpg", "b/2.jpg", "a/3.jpg", "c/4.jpg", "b/5.jpg", "c/6.jpg"]


def facts(width, height, size, mtime, state="present"):
    if state == "missing":
        return ImageFacts("missing", None, None)
    return ImageFacts(state, size, mtime, width, height)


FACTS = {
    0: facts(100, 100, 5000, 30),
    1: facts(200, 100, 4000, 20),  # the most pixels of group 1
    2: facts(200, 100, 4500, 10),  # as many pixels, more bytes: the largest; the oldest
    3: facts(50, 50, 100, 5, "missing"),  # gone: never kept while another file remains
    4: facts(10, 10, 900, 40),
    5: facts(10, 10, 900, 40),  # a tie with 4: the first in the collection wins
}
GROUPS = [(1, [0, 1, 2]), (2, [3, 4, 5])]


def kept(decisions):
    return {decision.group: decision.row for decision in decisions if decision.decision == "keep"}


@pytest.mark.parametrize(
    "rule, keep_in, expected",
    [
        ("largest", None, {1: 2, 2: 4}),
        ("oldest", None, {1: 2, 2: 4}),
        ("first", None, {1: 0, 2: 3}),  # "first" reads no file: it cannot tell that 3 is gone
        ("largest", "b", {1: 1, 2: 4}),
        ("first", "c", {1: 0, 2: 3}),
        ("oldest", "a", {1: 2, 2: 4}),
    ],
)
def test_each_group_keeps_the_one_its_rule_chooses(rule, keep_in, expected):
    decisions = keep.decide(GROUPS, NAMES, rule, None if rule == "first" else FACTS, keep_in)
    assert kept(decisions) == expected
    assert [decision.decision for decision in decisions] == ["keep", "remove", "remove"] * 2
    assert sorted(decision.row for decision in decisions) == list(range(6))


def test_reasons_say_why():
    decisions = {d.row: d for d in keep.decide(GROUPS, NAMES, "largest", FACTS, "b")}
    assert decisions[1].reason == "in b/, largest (200×100 px, 4000 bytes)"
    assert decisions[2].reason == "a duplicate of b/2.jpg"
    assert decisions[3].reason == "a duplicate of b/5.jpg; its file is gone"
    oldest = {d.row: d for d in keep.decide(GROUPS, NAMES, "oldest", FACTS, "c")}
    assert oldest[5].reason == "in c/, oldest (modified 1970-01-01T00:00:00+00:00)"
    assert oldest[2].reason == "no image in c/; oldest (modified 1970-01-01T00:00:00+00:00)"
    gone = {row: facts(1, 1, 1, 1, "missing") for row in range(6)}
    assert keep.decide([(1, [4, 5])], NAMES, "largest", gone)[0].reason.endswith("every file of the group is gone")


def test_every_group_keeps_exactly_one_whatever_the_files():
    rng = np.random.default_rng(0)
    rows = rng.permutation(300).tolist()
    sizes = rng.integers(2, 6, 100)
    groups, start = [], 0
    for number, size in enumerate(sizes, 1):
        if start + size > len(rows):
            break
        groups.append((number, sorted(rows[start : start + size])))
        start += size
    names = [f"{'xyz'[row % 3]}/{row}.jpg" for row in range(300)]
    states = ["present", "missing", "changed"]
    all_facts = {
        row: facts(*rng.integers(1, 4, 2), int(rng.integers(1, 3)), int(rng.integers(1, 3)), states[rng.integers(3)])
        for row in range(300)
    }
    for rule in keep.RULES:
        for keep_in in (None, "x"):
            decisions = keep.decide(groups, names, rule, all_facts, keep_in)
            for number, group_rows in groups:
                mine = [d for d in decisions if d.group == number]
                assert sorted(d.row for d in mine) == group_rows
                assert [d.decision for d in mine].count("keep") == 1
