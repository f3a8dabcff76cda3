"""Which image of each group of near-duplicates to keep, by a rule; the others are listed for removal, each with
its reason. Nothing is deleted: the list is for the user to act on.

Rules: "largest" (most pixels, then most bytes), "oldest" (earliest modification time), "first" (first in the
collection's order). A protected folder (`keep_in`, a folder as the image names write it) comes first: when a
group has images in it, one of them is kept. Images whose file is gone are kept only when the whole group is gone.
Ties go to the image first in the collection.
"""

import csv
import datetime
from typing import NamedTuple

RULES = ("largest", "oldest", "first")
COLUMNS = ["group", "image", "decision", "reason"]


class Decision(NamedTuple):
    group: int
    row: int
    decision: str  # "keep" or "remove"
    reason: str


def in_folder(name, folder):
    return name.startswith(folder + "/")


def normalised_folder(folder):
    folder = folder.strip()
    while folder.startswith("./"):
        folder = folder[2:]
    return folder.rstrip("/")


def describe(rule, facts):
    if rule == "largest":
        pixels = f"{facts.width}×{facts.height} px, " if facts.width is not None else ""
        return f"largest ({pixels}{facts.bytes} bytes)"
    if rule == "oldest":
        time = datetime.datetime.fromtimestamp(facts.mtime_ns / 1e9, datetime.UTC)
        return f"oldest (modified {time.isoformat(timespec='seconds')})"
    return "first in the collection"


def rank(rule, row, facts):
    """Sort key: the image to keep sorts first."""
    if rule == "largest":
        return (-(facts.width or 0) * (facts.height or 0), -facts.bytes, row)
    if rule == "oldest":
        return (facts.mtime_ns, row)
    return (row,)


def decide(groups, names, rule, facts=None, keep_in=None):
    """One Decision per image of `groups` ((number, rows) pairs): exactly one "keep" per group, listed first.
    `facts`: {row: ImageFacts} of every image (with pixels for "largest"); None is allowed for rule "first"."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    decisions = []
    for number, rows in groups:
        protected = [row for row in rows if keep_in is not None and in_folder(names[row], keep_in)]
        pool = protected or rows
        present = [row for row in pool if facts is None or facts[row].state != "missing"]
        if present:
            kept = min(present, key=lambda row: rank(rule, row, facts[row] if facts else None))
            reason = describe(rule, facts[kept] if facts else None)
        else:
            kept, reason = pool[0], "first in the collection; every file of the group is gone"
        if keep_in is not None:
            reason = f"in {keep_in}/, {reason}" if protected else f"no image in {keep_in}/; {reason}"
        decisions.append(Decision(number, kept, "keep", reason))
        for row in rows:
            if row == kept:
                continue
            why = f"a duplicate of {names[kept]}"
            if facts is not None and facts[row].state == "missing":
                why += "; its file is gone"
            if row in protected:
                why += f"; also in {keep_in}/"
            decisions.append(Decision(number, row, "remove", why))
    return decisions


def write_decisions(path, decisions, names):
    """keep.csv: group, image, decision (keep or remove), reason; a name that is not UTF-8 is written as its bytes."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for decision in decisions:
            writer.writerow([decision.group, names[decision.row], decision.decision, decision.reason])
