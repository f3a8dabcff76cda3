"""Loading pickles (e.g. revisitop's ground truth) without running arbitrary code."""

import codecs
import os
import pickle

# Containers, numbers, strings and None/bool are pickle opcodes; these are the only globals their
# pickles (protocols 0 to 5) and those of numpy arrays, scalars and dtypes refer to. The names that
# protocols 0-2 write for Python 2 (__builtin__) and that numpy 1.x wrote (numpy.core) map to these.
_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _canonical_module(module):
    if module == "__builtin__":
        return "builtins"
    if module.startswith("numpy.core."):
        return "numpy._core." + module[len("numpy.core.") :]
    return module


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode
        if (_canonical_module(module), name) in _ALLOWED_GLOBALS:
            return super().find_class(_canonical_module(module), name)
        raise pickle.UnpicklingError(
            f"{self.path}: forbidden global {module}.{name} (only containers, numbers, strings and numpy arrays)"
        )

    def _latin1_encode(self, text, encoding):
        # Protocols 0-2 store bytes as _codecs.encode(text, "latin1"); allow no other codec.
        if encoding != "latin1":
            raise pickle.UnpicklingError(f"{self.path}: forbidden encoding {encoding!r} in _codecs.encode")
        return codecs.encode(text, "latin1")


def load_pickle(path: str | os.PathLike):
    """Unpickle `path` allowing only plain containers, numbers, strings/bytes, None/bool and numpy
    arrays, scalars and dtypes. Anything else raises pickle.UnpicklingError before it can run."""
    with open(path, "rb") as file:
        return _RestrictedUnpickler(file, path).load()
