"""argparse types shared by the scripts' command lines.

Each factory returns a `type=` function that converts a flag's text and refuses a value out of its
range with an argparse.ArgumentTypeError, so that argparse prints "argument --flag: must be ..., got
..." and exits with code 2 before anything starts. NaN is always refused.
"""

import argparse
import math


def _interval(low, high, low_open=False, high_open=False):
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def int_in(low, high=None, *, or_value=None):
    """An integer in [low, high] (no upper bound when high is None), or exactly or_value when given."""
    requirement = f"an integer {_interval(low, high)}"
    if or_value is not None:
        requirement = f"{or_value} or {requirement}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
        if value != or_value and not (low <= value and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


def float_in(low, high=None, *, low_open=False, high_open=False, allow_inf=False):
    """A finite float from low to high, bounds included unless low_open / high_open (no upper bound when
    high is None); allow_inf also accepts inf (with no upper bound)."""
    interval = _interval(low, high, low_open, high_open)
    requirement = f"a number {interval} or inf" if allow_inf else f"a finite number {interval}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
        above_low = value > low if low_open else value >= low
        below_high = high is None or (value < high if high_open else value <= high)
        if not (above_low and below_high and (allow_inf or math.isfinite(value))):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


# The usual 32-bit range: numpy's SeedSequence and torch.Generator.manual_seed take more, up to 2**64 - 1 for
# torch, which this leaves room for in the seeds derived as seed + epoch.
seed = int_in(0, 2**32 - 1)
