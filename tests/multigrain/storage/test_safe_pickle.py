import builtins
import codecs
import os
import pickle

import numpy as np
import pytest

from multigrain.storage.safe_pickle import load_pickle


def revisitop_like_ground_truth():
    return {
        "imlist": ["all_souls_000013", "ashmolean_000283"],
        "qimlist": ["all_souls_000013"],
        "gnd": [
            {
                "bbx": np.array([136.5, 34.1, 648.5, 955.1]),
                "easy": np.array([0, 1], dtype=np.int64),
                "hard": np.array([], dtype=np.int64),
                "junk": [1],
            }
        ],
        "extras": (
            None,
            True,
            2**70,
            -1.5,
            1 + 2j,
            b"",
            b"\x00\xff",
            bytearray(b"ab"),
            {1, 2},
            frozenset({3}),
            np.float32(0.25),
            np.int64(-3),
            np.bool_(False),
            np.dtype("f8"),
            np.arange(6, dtype=np.uint8).reshape(2, 3).T,  # not C-contiguous
            np.zeros(2, dtype=[("id", "i4"), ("score", "f8")]),
            np.array([1, "a", None], dtype=object),
            np.array(["2018-01-01"], dtype="datetime64[D]"),
        ),
    }


def assert_same(loaded, expected):
    assert type(loaded) is type(expected)
    if isinstance(expected, dict):
        assert loaded.keys() == expected.keys()
        for key in expected:
            assert_same(loaded[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for loaded_item, expected_item in zip(loaded, expected):
            assert_same(loaded_item, expected_item)
    elif isinstance(expected, np.ndarray):
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        assert loaded.tolist() == expected.tolist()
    else:
        assert loaded == expected


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_ground_truth_round_trips(tmp_path, protocol):
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps(revisitop_like_ground_truth(), protocol=protocol))
    assert_same(load_pickle(path), revisitop_like_ground_truth())


def test_numpy_1_module_names_load(tmp_path):
    path = tmp_path / "old.pkl"
    data = pickle.dumps({"a": np.arange(3.0), "s": np.int32(7)}, protocol=2)
    assert b"numpy._core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = load_pickle(path)
    assert loaded["a"].tolist() == [0.0, 1.0, 2.0] and loaded["s"] == np.int32(7)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_pickle(tmp_path / "missing.pkl")


class Payload:
    """Unpickling it calls function(*args)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker):
    return {
        "system": Payload(os.system, f"touch {marker}"),
        "eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "open": Payload(builtins.open, str(marker), "w"),
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("name", ["system", "eval", "open"])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path, protocol, name):
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "evil.pkl"
    # hidden inside an otherwise valid ground truth
    ground_truth = revisitop_like_ground_truth()
    ground_truth["gnd"][0]["junk"] = [1, payloads(marker)[name]]
    path.write_bytes(pickle.dumps(ground_truth, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match="forbidden global") as error:
        load_pickle(path)
    assert str(path) in str(error.value) and f".{name}" in str(error.value)
    assert not marker.exists()


def test_ndarray_subclasses_are_refused(tmp_path):
    path = tmp_path / "matrix.pkl"
    path.write_bytes(pickle.dumps(np.ma.masked_array([1, 2], mask=[0, 1]), protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="numpy.ma"):
        load_pickle(path)


def test_only_latin1_codec_is_allowed(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(pickle.dumps(Payload(codecs.encode, "text", "rot13"), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        load_pickle(path)
