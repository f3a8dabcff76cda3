"""What an extract.py collection records of how its descriptors were made, and where two records differ: descriptors
are comparable only when the same model made them with the same settings."""


def differences(field, old, new):
    """(field.path, (old value, new value)) of every leaf where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from differences(f"{field}.{key}", old.get(key), new.get(key))
    elif old != new:
        yield field, (old, new)


def descriptor_settings(manifest):
    """What the descriptors depend on, from a manifest.json: the checkpoint's content and p, the extraction settings
    (not where the checkpoint is, nor which images)."""
    return {
        "model": {key: manifest["model"][key] for key in ("sha256", "pooling_exponent")},
        "extraction": manifest["extraction"],
    }


def settings_differences(first, second):
    """(field, (first's value, second's value)) of the descriptor settings in which two manifests differ."""
    first, second = descriptor_settings(first), descriptor_settings(second)
    return [difference for key in first for difference in differences(key, first[key], second[key])]
