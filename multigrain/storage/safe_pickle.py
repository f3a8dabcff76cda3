"""Unpickling without running code: one restricted unpickler, two policies.

`load_pickle` reads plain data (revisitop's ground truth): containers, numbers, strings and numpy
arrays; any other global is refused before it can run. `tensors_only_pickle` is a pickle module for
`torch.load` (published MultiGrain checkpoints, which weights_only refuses): it rebuilds tensors and
replaces every object of another class by an inert stand-in, so that the tensors can be kept and the
rest dropped.
"""

import codecs
import os
import pickle
import types

# Containers, numbers, strings and None/bool are pickle opcodes; these are the only globals their
# pickles (protocols 0 to 5) and those of numpy arrays, scalars and dtypes refer to. The names that
# protocols 0-2 write for Python 2 (__builtin__) and that numpy 1.x wrote (numpy.core) map to these.
PLAIN_DATA_GLOBALS = {
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

# The functions that rebuild tensors from a checkpoint's storages.
TENSOR_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
}


def _canonical_module(module):
    if module == "__builtin__":
        return "builtins"
    if module.startswith("numpy.core."):
        return "numpy._core." + module[len("numpy.core.") :]
    return module


class RestrictedUnpickler(pickle.Unpickler):
    """Imports only the globals of `allowed`; `forbidden(module, name)` decides about the others."""

    allowed = frozenset()
    source = "pickle"

    def find_class(self, module, name):
        if (_canonical_module(module), name) in self.allowed:
            return super().find_class(_canonical_module(module), name)
        return self.forbidden(module, name)

    def forbidden(self, module, name):
        raise pickle.UnpicklingError(
            f"{self.source}: forbidden global {module}.{name} (only containers, numbers, strings and numpy arrays)"
        )


class PlainDataUnpickler(RestrictedUnpickler):
    allowed = PLAIN_DATA_GLOBALS

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode
        return super().find_class(module, name)

    def _latin1_encode(self, text, encoding):
        # Protocols 0-2 store bytes as _codecs.encode(text, "latin1"); allow no other codec.
        if encoding != "latin1":
            raise pickle.UnpicklingError(f"{self.source}: forbidden encoding {encoding!r} in _codecs.encode")
        return codecs.encode(text, "latin1")


def load_pickle(path: str | os.PathLike):
    """Unpickle `path` allowing only plain containers, numbers, strings/bytes, None/bool and numpy
    arrays, scalars and dtypes. Anything else raises pickle.UnpicklingError before it can run."""
    with open(path, "rb") as file:
        return PlainDataUnpickler(file, path).load()


class NotLoaded:
    """Stands for an object of any other class: built from nothing, its state is ignored."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self):
        return f"<not loaded: {self.qualified_name}>"


class TensorsOnlyUnpickler(RestrictedUnpickler):
    allowed = TENSOR_GLOBALS

    def forbidden(self, module, name):
        return type(str(name), (NotLoaded,), {"qualified_name": f"{module}.{name}"})


def not_loaded_objects(value):
    """The qualified names of the NotLoaded stand-ins inside nested dicts, lists and tuples."""
    if isinstance(value, NotLoaded):
        return [value.qualified_name]
    if isinstance(value, dict):
        value = list(value.keys()) + list(value.values())
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in not_loaded_objects(item)]
    return []


tensors_only_pickle = types.ModuleType("tensors_only_pickle")
tensors_only_pickle.Unpickler = TensorsOnlyUnpickler
tensors_only_pickle.load = lambda file, **kwargs: TensorsOnlyUnpickler(file, **kwargs).load()
