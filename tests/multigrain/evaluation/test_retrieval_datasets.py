import os
import pickle

import numpy as np
import pytest

from multigrain.evaluation.retrieval_datasets import (
    read_copydays,
    read_distractors,
    read_holidays,
    read_revisitop,
    read_rotations,
    read_ukbench,
)
from tools import synthetic_data


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    written = {
        "holidays": synthetic_data.make_holidays(
            root / "holidays", num_groups=8, image_size=(40, 30), rotated_fraction=0.5
        ),
        "ukbench": synthetic_data.make_ukbench(root / "ukbench", num_groups=3, image_size=(32, 24)),
        "copydays": synthetic_data.make_copydays(
            root / "copydays", num_originals=4, num_distractors=6, image_size=(40, 30)
        ),
        "roxford5k": synthetic_data.make_revisitop(
            root / "revisitop", num_queries=2, num_database=12, image_size=(48, 36)
        ),
    }
    return root, written


def ranking_with_first(first, size):
    """A ranking of range(size) that starts with `first`, in that order."""
    first = list(first)
    return np.array(first + [i for i in range(size) if i not in first])


def test_read_rotations(tmp_path):
    path = tmp_path / "rotations.txt"
    path.write_text("# comment\n100000.jpg 90\n\n100001.jpg  270.0  # trailing comment\n")
    assert read_rotations(path, ["100000.jpg", "100001.jpg", "100002.jpg"]) == {"100000.jpg": 90.0, "100001.jpg": 270.0}
    path.write_text("100000.jpg ninety\n")
    with pytest.raises(ValueError, match="line 1"):
        read_rotations(path, ["100000.jpg"])
    path.write_text("100000.jpg 90\n999900.jpg 90\n")
    with pytest.raises(ValueError, match="line 2: 999900.jpg"):
        read_rotations(path, ["100000.jpg"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_rotations(tmp_path / "missing.txt", [])


def test_holidays_queries_rotations_and_score(bench):
    root, written = bench
    groups, rotations = written["holidays"]["groups"], written["holidays"]["rotations"]
    benchmark = read_holidays(root / "holidays", root / "holidays" / "rotations.txt")
    names = [name for group in groups for name in group]
    assert benchmark.database.names == [f"jpg/{name}" for name in sorted(names)]
    assert [benchmark.database.names[i] for i in benchmark.query_indices] == [f"jpg/{group[0]}" for group in groups]
    assert benchmark.queries is None

    # Upright again: every image of a group has its scene's size, although some files are stored sideways.
    assert any(degrees in (90, 270) for degrees in rotations.values())
    index = {name: i for i, name in enumerate(benchmark.database.names)}
    for group in groups:
        sizes = {benchmark.database[index[f"jpg/{name}"]].size for name in group}
        assert len(sizes) == 1, group
    unrotated = read_holidays(root / "holidays")
    rotated_name = next(name for name, degrees in rotations.items() if degrees in (90, 270))
    assert (
        unrotated.database[index[f"jpg/{rotated_name}"]].size != benchmark.database[index[f"jpg/{rotated_name}"]].size
    )

    perfect = []
    for group in groups:
        members = [index[f"jpg/{name}"] for name in group]
        perfect.append(ranking_with_first(members, len(names)))
    assert benchmark.score(np.stack(perfect)) == {"mAP": pytest.approx(100.0)}
    reversed_rankings = np.stack([ranking[::-1] for ranking in perfect])
    assert benchmark.score(reversed_rankings)["mAP"] < 50.0


def test_holidays_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--holidays-path"):
        read_holidays(tmp_path)


def test_ukbench_sorted_groups_of_four(bench, tmp_path):
    root, written = bench
    benchmark = read_ukbench(root / "ukbench")
    assert benchmark.database.names == [f"full/{name}" for name in written["ukbench"]]
    assert list(benchmark.query_indices) == list(range(12)) and benchmark.num_neighbors == 4
    perfect = np.stack([ranking_with_first(range(4 * (i // 4), 4 * (i // 4) + 4), 12) for i in range(12)])
    assert benchmark.score(perfect) == {"N-S": 4.0}
    assert benchmark.score(np.roll(perfect, 4, axis=0)) == {"N-S": 0.0}

    os.makedirs(tmp_path / "full")
    for name in written["ukbench"][:5]:
        (tmp_path / "full" / name).write_bytes((root / "ukbench" / "full" / name).read_bytes())
    with pytest.raises(ValueError, match="groups of 4"):
        read_ukbench(tmp_path)


def test_copydays_database_positives_and_distractors(bench):
    root, written = bench
    copydays = root / "copydays"
    list_file = copydays / "distractors.txt"
    benchmark = read_copydays(copydays, copydays, list_file, num_distractors=4)
    originals = written["copydays"]["originals"]
    assert (
        benchmark.database.names == [f"original/{name}" for name in originals] + written["copydays"]["distractors"][:4]
    )
    query_names = sorted(written["copydays"]["queries"])
    assert benchmark.queries.names == [f"strong/{name}" for name in query_names]

    positives = [originals.index(written["copydays"]["queries"][name]) for name in query_names]
    size = len(benchmark.database)
    perfect = np.stack([ranking_with_first([p], size) for p in positives])
    assert benchmark.score(perfect) == {"mAP": pytest.approx(100.0)}
    second = np.stack([ranking_with_first([size - 1, p], size) for p in positives])
    assert benchmark.score(second) == {"mAP": pytest.approx(25.0)}  # (0 / 1 + 1 / 2) / 2 at rank 1

    assert len(read_copydays(copydays).database) == len(originals)
    with pytest.raises(ValueError, match="--num-distractors 7 but"):
        read_copydays(copydays, copydays, list_file, num_distractors=7)
    with pytest.raises(ValueError, match="--distractors-path"):
        read_copydays(copydays, None, list_file)


def test_distractors_from_folder_scan(bench):
    root, written = bench
    paths, names = read_distractors(root / "copydays" / "distractors", num_distractors=None)
    assert names == sorted(os.path.basename(name) for name in written["copydays"]["distractors"])
    assert all(path.is_file() for path in paths)
    bad_list = root / "bad_list.txt"
    bad_list.write_text("distractors/not_there.jpg\n")
    with pytest.raises(FileNotFoundError, match="not_there.jpg"):
        read_distractors(root / "copydays", bad_list)


def test_revisitop_query_crop_and_protocols(bench):
    root, written = bench
    gnd = written["roxford5k"]["gnd"]
    benchmark = read_revisitop(root / "revisitop" / "roxford5k", "roxford5k")
    assert benchmark.database.names == [f"jpg/{name}.jpg" for name in written["roxford5k"]["imlist"]]
    for query, entry in enumerate(gnd):
        x1, y1, x2, y2 = entry["bbx"]
        assert benchmark.queries[query].size == (round(x2) - round(x1), round(y2) - round(y1))

    # Easy images rank before the hard ones: they are junk for Hard and removed, so all scores are perfect.
    perfect = np.stack([ranking_with_first(g["easy"] + g["hard"], 12) for g in gnd])
    scores = benchmark.score(perfect)
    assert set(scores) == {f"{p} {m}" for p in "EMH" for m in ("mAP", "mP@1", "mP@5", "mP@10")}
    assert all(value == pytest.approx(100.0) for value in scores.values()), scores
    junk_first = np.stack([ranking_with_first(g["junk"] + g["hard"] + g["easy"], 12) for g in gnd])
    assert all(value == pytest.approx(100.0) for value in benchmark.score(junk_first).values())
    relevant = [set(g["easy"] + g["hard"] + g["junk"]) for g in gnd]
    distractor_first = np.stack(
        [ranking_with_first([min(set(range(12)) - r)] + g["easy"] + g["hard"], 12) for g, r in zip(gnd, relevant)]
    )
    scores = benchmark.score(distractor_first)
    assert all(scores[f"{p} mAP"] < 100.0 and scores[f"{p} mP@1"] == 0.0 for p in "EMH"), scores


def test_revisitop_refuses_unsafe_pickle(tmp_path):
    folder = tmp_path / "roxford5k"
    os.makedirs(folder / "jpg")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    with open(folder / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        read_revisitop(folder, "roxford5k")
    with open(folder / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": ["a"], "qimlist": ["q"], "gnd": []}, f)
    with pytest.raises(ValueError, match="0 gnd entries for 1 queries"):
        read_revisitop(folder, "roxford5k")
    with pytest.raises(ValueError, match="unknown revisitop"):
        read_revisitop(folder, "oxford")
