"""The recipe of a training run: the values of the flags that change what is trained, and the global batch size
(-b times the number of processes). A training state continues only under its own recipe, except for the changes
that --allow-change names.
"""

import os

from ..storage.checkpoint import describe

GLOBAL_BATCH = "global_batch_size"
# The flags of the full augmentation, refused with --augmentation copy-detection.
FULL_AUGMENTATION_FLAGS = ("auto_augment", "ra_magnitude", "augmix_severity", "color_jitter", "lighting")


class Recipe:
    """The recipe's `flags` (dest -> "--flag", in the recipe's order) with their `defaults` (dest -> value)."""

    def __init__(self, flags, defaults):
        self.flags, self.defaults = flags, defaults

    def check_trainable(self, args):
        """Refuses recipe values of the command line `args` that cannot train together."""
        if args.lr_warmup_epochs >= args.epochs:
            raise ValueError(f"--lr-warmup-epochs {args.lr_warmup_epochs} must be below --epochs {args.epochs}")
        main_epochs = args.epochs - args.lr_warmup_epochs
        steps = args.lr_steps
        if args.lr_scheduler == "multisteplr" and (steps != sorted(set(steps)) or steps[-1] >= main_epochs):
            raise ValueError(
                f"--lr-steps of multisteplr must increase and stay below --epochs - --lr-warmup-epochs = {main_epochs} "
                f"(they count epochs from the end of the warm-up), got {' '.join(map(str, steps))}"
            )
        if args.lr_scheduler == "cosineannealinglr" and args.lr_min >= args.lr:
            raise ValueError(f"--lr-min {args.lr_min} of cosineannealinglr must be below --lr {args.lr}")
        if args.sampling_cutoff >= args.nonzero_loss_cutoff:
            raise ValueError(
                f"--sampling-cutoff {args.sampling_cutoff} must be below "
                f"--nonzero-loss-cutoff {args.nonzero_loss_cutoff}"
            )
        if args.classif_weight < 1.0 and not args.ra_sampler:
            raise ValueError(
                f"--classif-weight {args.classif_weight} < 1 needs repeated augmentation for the margin loss's "
                "positive pairs: drop --no-ra-sampler, or use --classif-weight 1 for classification only"
            )
        if args.classif_weight < 1.0 and args.ra_reps < 2:
            raise ValueError(f"--classif-weight < 1 needs --ra-reps >= 2 to have positive pairs, got {args.ra_reps}")
        if args.augmentation == "copy-detection":
            for flag in FULL_AUGMENTATION_FLAGS:
                if getattr(args, flag) != self.defaults[flag]:
                    raise ValueError(f"--{flag.replace('_', '-')} is a flag of --augmentation full, not copy-detection")

    def of(self, args, world_size) -> dict:
        """The recipe of the command line `args` run by `world_size` processes."""
        return {**{flag: getattr(args, flag) for flag in self.flags}, GLOBAL_BATCH: args.batch_size * world_size}

    def stored(self, checkpoint) -> dict:
        """The recipe of a training state; rebuilt from its arguments for states written before `recipe` was."""
        if "recipe" in checkpoint:
            return checkpoint["recipe"]
        stored = checkpoint.get("args") or {}
        values = {flag: stored.get(flag, self.defaults[flag]) for flag in self.flags}
        return {**values, GLOBAL_BATCH: stored.get("batch_size", 0) * stored.get("world_size", 1)}

    def names(self) -> dict:
        """Each recipe entry as the command line spells it: dest -> "--flag"."""
        return {GLOBAL_BATCH: "global batch size (-b × processes)", **self.flags}

    def allowed_changes(self, allow_change) -> set:
        """The recipe entries named by --allow-change (flag names without their leading dashes)."""
        by_name = {name.lstrip("-"): dest for dest, name in self.flags.items()}
        by_name["batch-size"] = GLOBAL_BATCH
        unknown = [name for name in allow_change if name.lstrip("-") not in by_name]
        if unknown:
            raise ValueError(
                f"--allow-change {' '.join(unknown)}: not a recipe flag; recipe flags: {', '.join(sorted(by_name))}"
            )
        return {by_name[name.lstrip("-")] for name in allow_change}

    def check(self, checkpoint, path, args, world_size) -> list:
        """Refuses to continue a training state under another recipe than its own, except for the changes that
        args.allow_change names. Returns the allowed changes as (entry, stored, given) triples."""
        stored, given = self.stored(checkpoint), self.of(args, world_size)
        allowed = self.allowed_changes(args.allow_change)
        # A flag added since the state was written has its default there.
        stored = {key: stored.get(key, self.defaults.get(key)) for key in given}
        changes = [(key, stored[key], value) for key, value in given.items() if stored[key] != value]
        refused = [change for change in changes if change[0] not in allowed]
        if refused:
            names = self.names()
            lines = "".join(f"\n  {names[key]}: {old!r} → {new!r}" for key, old, new in refused)
            to_allow = " ".join(
                names[key].lstrip("-") if key != GLOBAL_BATCH else "batch-size" for key, _, _ in refused
            )
            raise ValueError(
                f"{describe(checkpoint, path)} was trained with another recipe than this command line's:{lines}\n"
                f"To continue it, run its own recipe again. To start a new run, give it a new --output-dir (or pass "
                f"--no-auto-resume to start over in {os.path.dirname(path) or '.'}, replacing its checkpoint). To "
                f"change the recipe of this run deliberately, pass --allow-change {to_allow}"
            )
        return changes
