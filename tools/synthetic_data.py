"""Write small synthetic datasets of real JPEG files in the folder layouts of the real benchmarks.

Layouts: ImageNet-like classification (torchvision ImageFolder), INRIA Holidays, UKBench, Copydays
(CD10k) and the revisited Oxford / Paris benchmarks. Nothing is downloaded; every pixel is generated
deterministically from --seed, so the demo and the tests go through the real image loading path.

Each class is a hue family combined with a texture spread over the whole picture, so that the class
survives a RandomResizedCrop of 8% of the area and colour jitter. Each image is its own instance: a
random texture phase, shades, illumination and a random set of coloured shapes.

The retrieval layouts draw their pictures from classes 0 .. --num-classes - 1 (default 10, the classes
of the default ImageFolder), as the scenes of the real benchmarks fall in ImageNet's classes: a model
trained on the synthetic ImageFolder then has seen their kind of picture, and distractors share
classes with the queries.
"""

import argparse
import colorsys
import pickle
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

if __name__ == "__main__":  # run as `python tools/synthetic_data.py`: the package is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from multigrain.images.copy_edits import make_copy_edit, make_variant, paste_into  # noqa: E402

HUE_FAMILIES = 12
TEXTURES = ("stripes", "stripes-90", "stripes-45", "checker", "checker-45", "dots")
MAX_CLASSES = HUE_FAMILIES * len(TEXTURES)
JPEG_QUALITY = 90
TEXTURE_ANGLES = {"stripes": 0, "stripes-90": 90, "stripes-45": 45, "checker": 0, "checker-45": 45}
REVISITOP_PREFIXES = {"roxford5k": "oxford", "rparis6k": "paris"}


def parse_size(text: str) -> tuple[int, int]:
    """Parse "64" or "80x60" (width x height) into (width, height)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"image size must look like 64 or 80x60, got {text!r}")
    width = int(parts[0])
    height = int(parts[-1])
    return width, height


def _as_size(size) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else tuple(size)
    if min(width, height) < 16:
        raise ValueError(f"--image-size must be at least 16 pixels on each side, got {width}x{height}")
    return int(width), int(height)


def _check_range(value: int, low: int, high: int, flag: str) -> None:
    if not low <= value <= high:
        raise ValueError(f"{flag} must be between {low} and {high}, got {value}")


def _layout_rng(seed: int, layout: str) -> np.random.Generator:
    # One independent stream per layout, so that e.g. Holidays does not repeat the ImageNet pictures.
    return np.random.default_rng([seed, zlib.crc32(layout.encode())])


def _prepare_output(root: Path) -> Path:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"output {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(f"output folder {root} is not empty: remove it or choose another --output")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=JPEG_QUALITY)


def _random_orientation(size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Photos come in landscape and portrait: swap the sides of a third of them."""
    width, height = size
    return (height, width) if rng.random() < 1 / 3 else (width, height)


def class_hue_and_texture(class_id: int) -> tuple[float, str]:
    """The class signal: one of 12 hue families and one of 6 textures, unique for every class id < 72."""
    _check_range(class_id, 0, MAX_CLASSES - 1, "class id")
    hue = (class_id % HUE_FAMILIES) / HUE_FAMILIES
    # Classes sharing a hue family (ids 12 apart) get different textures.
    texture = TEXTURES[(class_id + class_id // HUE_FAMILIES) % len(TEXTURES)]
    return hue, texture


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _texture_pattern(texture: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft two-level pattern in [0, 1] with a random phase, period, warp and small angle jitter."""
    if texture == "dots":
        angle = rng.uniform(0, 90)
    else:
        angle = TEXTURE_ANGLES[texture] + rng.uniform(-6, 6)
    theta = np.deg2rad(angle)
    frequency = 2 * np.pi / rng.uniform(0.09, 0.15)
    u = (x * np.cos(theta) + y * np.sin(theta)) * frequency + rng.uniform(0, 2 * np.pi)
    v = (-x * np.sin(theta) + y * np.cos(theta)) * frequency + rng.uniform(0, 2 * np.pi)
    # A gentle wave along the other axis makes the texture itself specific to the instance.
    wave_frequency = 2 * np.pi * rng.uniform(0.5, 2.0) / frequency
    u = u + rng.uniform(0, 1.2) * np.sin(wave_frequency * v + rng.uniform(0, 2 * np.pi))
    if texture.startswith("stripes"):
        signal = np.sin(u)
    elif texture.startswith("checker"):
        signal = np.sin(u) * np.sin(v) * 2
    else:
        signal = np.cos(u) + np.cos(v) - 0.8
    return 0.5 + 0.5 * np.tanh(3 * signal)


def _shape_mask(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    center_x, center_y = rng.uniform(0, x.max()), rng.uniform(0, y.max())
    radius_a, radius_b = rng.uniform(0.06, 0.2, size=2)
    theta = rng.uniform(0, np.pi)
    dx, dy = x - center_x, y - center_y
    along = (dx * np.cos(theta) + dy * np.sin(theta)) / radius_a
    across = (-dx * np.sin(theta) + dy * np.cos(theta)) / radius_b
    if rng.random() < 0.5:
        return along**2 + across**2 <= 1
    return (np.abs(along) <= 1) & (np.abs(across) <= 1)


def render_image(class_id: int, rng: np.random.Generator, size=64) -> Image.Image:
    """Render one new instance of class `class_id` as an RGB image; `size` is an int or (width, height)."""
    width, height = _as_size(size)
    hue, texture = class_hue_and_texture(class_id)
    scale = max(width, height)
    x = ((np.arange(width) + 0.5) / scale)[None, :]
    y = ((np.arange(height) + 0.5) / scale)[:, None]
    x, y = np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))

    light = _hsv_to_rgb(hue + rng.uniform(-0.02, 0.02), rng.uniform(0.45, 0.8), rng.uniform(0.85, 1.0))
    dark = _hsv_to_rgb(hue + rng.uniform(-0.02, 0.02), rng.uniform(0.7, 1.0), rng.uniform(0.3, 0.55))
    pattern = _texture_pattern(texture, x, y, rng)[..., None]
    pixels = dark + (light - dark) * pattern

    direction = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(direction) + (y - 0.5) * np.sin(direction)
    pixels = pixels * (1 + rng.uniform(0.1, 0.4) * ramp)[..., None]

    # Secondary colours: half-transparent shapes that keep the class texture visible underneath.
    for _ in range(rng.integers(3, 7)):
        mask = _shape_mask(x, y, rng)[..., None]
        colour = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0))
        pixels = np.where(mask, 0.5 * pixels + 0.5 * colour, pixels)

    pixels = pixels + rng.normal(0, 0.02, size=pixels.shape)
    return Image.fromarray(np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def make_imagefolder(root, num_classes=10, train_per_class=40, val_per_class=10, image_size=64, seed=0):
    """ImageFolder layout root/{train,val}/class_XXX/*.jpg; returns {split: [(relative path, class id)]}."""
    _check_range(num_classes, 1, MAX_CLASSES, "--num-classes")
    _check_range(train_per_class, 1, 100000, "--train-per-class")
    _check_range(val_per_class, 1, 100000, "--val-per-class")
    size = _as_size(image_size)
    root = _prepare_output(root)
    rng = _layout_rng(seed, "imagefolder")
    written = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        written[split] = []
        for class_id in range(num_classes):
            class_name = f"class_{class_id:03d}"
            for index in range(per_class):
                relative = f"{split}/{class_name}/{class_name}_{index:05d}.jpg"
                _save_jpeg(render_image(class_id, rng, size), root / relative)
                written[split].append((relative, class_id))
    return written


def make_holidays(
    root, num_groups=20, images_per_group=3, image_size=(96, 72), rotated_fraction=0.25, num_classes=10, seed=0
):
    """INRIA Holidays layout: root/jpg/NNNNXX.jpg and root/rotations.txt.

    Group NNNN (from 1000) is one scene: XX=00 is the query, XX=01.. are variants of it. Group sizes are
    drawn in [2, images_per_group] and the last group is a full one. A fraction of the files is stored
    sideways or upside down; rotations.txt lists them as "<file name> <degrees>", the degrees that restore
    the upright picture with Image.rotate(degrees, expand=True). The picture content does not depend on
    `rotated_fraction`. Returns {"groups": [[file names, query first]], "rotations": {file name: degrees}}.
    """
    _check_range(num_groups, 1, 9000, "--num-groups")
    _check_range(images_per_group, 2, 100, "--images-per-group")
    _check_range(num_classes, 1, MAX_CLASSES, "--num-classes")
    if not 0 <= rotated_fraction <= 1:
        raise ValueError(f"--rotated-fraction must be in [0, 1], got {rotated_fraction}")
    size = _as_size(image_size)
    root = _prepare_output(root)
    rng = _layout_rng(seed, "holidays")
    group_sizes = rng.integers(2, images_per_group + 1, size=num_groups)
    group_sizes[-1] = images_per_group

    groups, upright_images = [], {}
    for group, group_size in enumerate(group_sizes):
        scene = render_image(int(rng.integers(num_classes)), rng, _random_orientation(size, rng))
        names = [f"{1000 + group:04d}{index:02d}.jpg" for index in range(group_size)]
        upright_images[names[0]] = scene
        for name in names[1:]:
            upright_images[name] = make_variant(scene, rng, strength=0.5, rotate=True, mirror=rng.random() < 0.5)
        groups.append(names)

    all_names = [name for names in groups for name in names]
    rotation_rng = _layout_rng(seed, "holidays-rotations")
    num_rotated = round(rotated_fraction * len(all_names))
    rotated = sorted(rotation_rng.choice(len(all_names), size=num_rotated, replace=False))
    rotations = {all_names[index]: (90, 180, 270)[order % 3] for order, index in enumerate(rotated)}

    for name, image in upright_images.items():
        if name in rotations:
            image = image.rotate(-rotations[name], expand=True)
        _save_jpeg(image, root / "jpg" / name)
    lines = [f"{name} {degrees}\n" for name, degrees in rotations.items()]
    (root / "rotations.txt").write_text("".join(lines))
    return {"groups": groups, "rotations": rotations}


def make_ukbench(root, num_groups=25, image_size=(80, 60), num_classes=10, seed=0):
    """UKBench layout: root/full/ukbenchNNNNN.jpg, 4 consecutive images per object, all the same size.

    Returns the file names in order.
    """
    _check_range(num_groups, 1, 25000, "--num-groups")
    _check_range(num_classes, 1, MAX_CLASSES, "--num-classes")
    size = _as_size(image_size)
    root = _prepare_output(root)
    rng = _layout_rng(seed, "ukbench")
    names = []
    for group in range(num_groups):
        instance = render_image(int(rng.integers(num_classes)), rng, size)
        for view in range(4):
            name = f"ukbench{4 * group + view:05d}.jpg"
            variant = make_variant(instance, rng, strength=0.35, rotate=True, mirror=rng.random() < 0.5)
            _save_jpeg(variant, root / "full" / name)
            names.append(name)
    return names


def make_copydays(root, num_originals=12, num_distractors=40, image_size=(96, 72), num_classes=10, seed=0):
    """Copydays (CD10k) layout: root/original/NNNN00.jpg, root/strong/NNNNXX.jpg, root/distractors/*.jpg.

    Each original (NNNN from 2000) has 1 to 3 strongly attacked copies in strong/ sharing its first 4
    characters. root/distractors.txt lists the distractors relative to root ("distractors/....jpg").
    Returns {"originals": [...], "queries": {query name: original name}, "distractors": [relative paths]}.
    """
    _check_range(num_originals, 1, 8000, "--num-originals")
    _check_range(num_distractors, 0, 10**6, "--num-distractors")
    _check_range(num_classes, 1, MAX_CLASSES, "--num-classes")
    size = _as_size(image_size)
    root = _prepare_output(root)
    rng = _layout_rng(seed, "copydays")
    originals, queries = [], {}
    for index in range(num_originals):
        original = render_image(int(rng.integers(num_classes)), rng, _random_orientation(size, rng))
        original_name = f"{2000 + index:04d}00.jpg"
        _save_jpeg(original, root / "original" / original_name)
        originals.append(original_name)
        for attack in range(1, rng.integers(1, 4) + 1):
            query_name = f"{2000 + index:04d}{attack:02d}.jpg"
            attacked = make_variant(original, rng, strength=1.0, rotate=True, mirror=rng.random() < 0.5)
            _save_jpeg(attacked, root / "strong" / query_name)
            queries[query_name] = original_name

    distractors = []
    for index in range(num_distractors):
        relative = f"distractors/distractor_{index:06d}.jpg"
        distractor = render_image(int(rng.integers(num_classes)), rng, _random_orientation(size, rng))
        _save_jpeg(distractor, root / relative)
        distractors.append(relative)
    (root / "distractors.txt").write_text("".join(f"{relative}\n" for relative in distractors))
    return {"originals": originals, "queries": queries, "distractors": distractors}


def _paste_instance(instance, size, box_fraction, rng, background_class):
    """Paste `instance` into a new cluttered picture of `size`; returns the picture and the box [x1, y1, x2, y2]."""
    width, height = size
    picture = render_image(background_class, rng, size)
    box_size = (max(8, round(width * box_fraction)), max(8, round(height * box_fraction)))
    return paste_into(instance, picture, box_size, rng)


def make_revisitop(root, name="roxford5k", num_queries=5, num_database=40, image_size=(96, 72), num_classes=10, seed=0):
    """Revisited Oxford / Paris layout: root/<name>/jpg/*.jpg and root/<name>/gnd_<name>.pkl.

    Each query shows an instance inside clutter (its box is `bbx`). The database holds 2 easy (mild
    variant, large), 2 hard (strong variant, smaller) and 1 junk (strong variant, tiny) image of every
    query's instance, and distractors. Returns the ground-truth dict written to the pickle.
    """
    if name not in REVISITOP_PREFIXES:
        raise ValueError(f"--name must be one of {sorted(REVISITOP_PREFIXES)}, got {name!r}")
    _check_range(num_queries, 1, 1000, "--num-queries")
    # A query's instance and its clutter come from two different classes.
    _check_range(num_classes, 2, MAX_CLASSES, "--num-classes")
    if num_database < 5 * num_queries:
        raise ValueError(f"--num-database must be at least 5 x --num-queries = {5 * num_queries}, got {num_database}")
    size = _as_size(image_size)
    root = _prepare_output(Path(root) / name)
    rng = _layout_rng(seed, name)
    prefix = REVISITOP_PREFIXES[name]
    # (kind, variant strength, box side as a fraction of the picture side)
    relevant_kinds = [
        ("easy", 0.2, 0.75),
        ("easy", 0.3, 0.65),
        ("hard", 0.8, 0.5),
        ("hard", 0.9, 0.42),
        ("junk", 1.0, 0.25),
    ]

    database_order = rng.permutation(num_database)
    database_images = [None] * num_database
    qimlist, gnd = [], []
    for query in range(num_queries):
        instance_class, background_class = rng.choice(num_classes, size=2, replace=False)
        box_fraction = rng.uniform(0.55, 0.7)
        instance_size = (round(size[0] * box_fraction), round(size[1] * box_fraction))
        instance = render_image(int(instance_class), rng, instance_size)
        picture, bbx = _paste_instance(instance, size, box_fraction, rng, int(background_class))
        query_name = f"{prefix}_query_{query:03d}"
        _save_jpeg(picture, root / "jpg" / f"{query_name}.jpg")
        qimlist.append(query_name)

        ground_truth = {"bbx": bbx, "easy": [], "hard": [], "junk": []}
        for slot, (kind, strength, fraction) in enumerate(relevant_kinds):
            database_index = int(database_order[5 * query + slot])
            variant = make_variant(instance, rng, strength, rotate=kind != "easy", mirror=rng.random() < 0.5)
            database_images[database_index], _ = _paste_instance(
                variant, size, fraction, rng, int(rng.integers(num_classes))
            )
            ground_truth[kind].append(database_index)
        for kind in ("easy", "hard", "junk"):
            ground_truth[kind].sort()
        gnd.append(ground_truth)

    imlist = [f"{prefix}_{index:06d}" for index in range(num_database)]
    for index, image_name in enumerate(imlist):
        image = database_images[index]
        if image is None:
            image = render_image(int(rng.integers(num_classes)), rng, size)
        _save_jpeg(image, root / "jpg" / f"{image_name}.jpg")

    ground_truth_file = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    with open(root / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump(ground_truth_file, f, protocol=4)
    return ground_truth_file


def make_duplicates(root, num_originals=60, duplicated_fraction=0.5, image_size=(96, 72), num_classes=10, seed=0):
    """A collection with planted near-duplicates: root/images/{a,b,c}/image_NNNNN.jpg in random order, and
    root/duplicates.csv, every pair of copies of the same picture (columns image1,image2, names relative
    to root/images).

    A `duplicated_fraction` of the originals get 1 to 3 copies attacked like the strong Copydays ones at
    half the strength (crop, rescale, rotation, colour, JPEG). Returns {"images": [names],
    "groups": [[names of one picture and its copies]]}.
    """
    _check_range(num_originals, 1, 10**6, "--num-originals")
    _check_range(num_classes, 1, MAX_CLASSES, "--num-classes")
    if not 0 <= duplicated_fraction <= 1:
        raise ValueError(f"--duplicated-fraction must be in [0, 1], got {duplicated_fraction}")
    size = _as_size(image_size)
    root = _prepare_output(root)
    rng = _layout_rng(seed, "duplicates")
    pictures = []
    for _ in range(num_originals):
        original = render_image(int(rng.integers(num_classes)), rng, _random_orientation(size, rng))
        copies = int(rng.integers(1, 4)) if rng.random() < duplicated_fraction else 0
        pictures.append([original] + [make_variant(original, rng, strength=0.5, rotate=True) for _ in range(copies)])
    num_images = sum(len(group) for group in pictures)
    numbers = iter(rng.permutation(num_images))
    groups = []
    for group in pictures:
        names = []
        for image in group:
            number = int(next(numbers))
            name = f"{'abc'[number % 3]}/image_{number:05d}.jpg"
            _save_jpeg(image, root / "images" / name)
            names.append(name)
        groups.append(names)
    pairs = [(a, b) for names in groups for i, a in enumerate(names) for b in names[i + 1 :]]
    (root / "duplicates.csv").write_text("image1,image2\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    duplicated = [names for names in groups if len(names) > 1]
    return {"images": sorted(name for names in groups for name in names), "groups": duplicated}


def make_disc21(
    root,
    num_references=60,
    num_matched=30,
    num_unrelated=10,
    num_training=40,
    image_size=(96, 72),
    strength=1.0,
    num_classes=10,
    seed=0,
):
    """DISC21 layout: root/{queries,references,training}/ with Q00000.jpg, R000000.jpg, T000000.jpg,
    root/ground_truth.csv and list files.

    `num_matched` queries are edited copies (`make_copy_edit`, the overlay taken from a training-like
    picture) of distinct references, `num_unrelated` are edited new pictures with no reference; query ids
    are shuffled. ground_truth.csv has a header and one line per query (an empty reference_id for the
    unrelated ones). dev_queries.txt lists the first half of the query ids (as the dev 25k queries);
    subset_1_queries.txt and subset_1_references.txt list the matched queries among the second half and
    their references plus as many other references (as the challenge's subset 1).
    Returns {"ground_truth": {query id: reference id or ""}, "references": [...], "training": [...]}.
    """
    _check_range(num_references, 1, 10**6, "--num-references")
    _check_range(num_matched, 1, num_references, "--num-matched")
    _check_range(num_unrelated, 0, 10**5, "--num-unrelated")
    _check_range(num_training, 0, 10**6, "--num-training")
    _check_range(num_classes, 1, MAX_CLASSES, "--num-classes")
    if not 0 <= strength <= 1:
        raise ValueError(f"--strength must be in [0, 1], got {strength}")
    size = _as_size(image_size)
    root = _prepare_output(root)
    rng = _layout_rng(seed, "disc21")

    def picture():
        return render_image(int(rng.integers(num_classes)), rng, _random_orientation(size, rng))

    references = []
    for index in range(num_references):
        reference = picture()
        _save_jpeg(reference, root / "references" / f"R{index:06d}.jpg")
        references.append(reference)
    training = [f"T{index:06d}" for index in range(num_training)]
    for name in training:
        _save_jpeg(picture(), root / "training" / f"{name}.jpg")

    matched = rng.choice(num_references, size=num_matched, replace=False)
    sources = [(references[r], f"R{r:06d}") for r in matched] + [(picture(), "") for _ in range(num_unrelated)]
    order = rng.permutation(len(sources))
    ground_truth = {}
    for query_index, source_index in enumerate(order):
        image, reference_id = sources[source_index]
        query_id = f"Q{query_index:05d}"
        _save_jpeg(make_copy_edit(image, picture(), rng, strength), root / "queries" / f"{query_id}.jpg")
        ground_truth[query_id] = reference_id
    lines = ["query_id,reference_id\n"] + [f"{query},{reference}\n" for query, reference in ground_truth.items()]
    (root / "ground_truth.csv").write_text("".join(lines))

    query_ids = list(ground_truth)
    (root / "dev_queries.txt").write_text("".join(f"{query}\n" for query in query_ids[: len(query_ids) // 2]))
    subset_queries = [query for query in query_ids[len(query_ids) // 2 :] if ground_truth[query]]
    subset_references = sorted({ground_truth[query] for query in subset_queries})
    others = [f"R{r:06d}" for r in range(num_references) if f"R{r:06d}" not in subset_references]
    subset_references = sorted(subset_references + others[: len(subset_references)])
    (root / "subset_1_queries.txt").write_text("".join(f"{query}\n" for query in subset_queries))
    (root / "subset_1_references.txt").write_text("".join(f"{reference}\n" for reference in subset_references))
    return {
        "ground_truth": ground_truth,
        "references": [f"R{r:06d}" for r in range(num_references)],
        "training": training,
    }


def make_all(root, seed=0):
    """Every layout with its small defaults under root; returns {layout folder: what its writer returned}."""
    root = Path(root)
    return {
        "imagenet": make_imagefolder(root / "imagenet", seed=seed),
        "holidays": make_holidays(root / "holidays", seed=seed),
        "ukbench": make_ukbench(root / "ukbench", seed=seed),
        "copydays": make_copydays(root / "copydays", seed=seed),
        "revisitop/roxford5k": make_revisitop(root / "revisitop", name="roxford5k", seed=seed),
        "revisitop/rparis6k": make_revisitop(root / "revisitop", name="rparis6k", seed=seed),
    }


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description="Write synthetic JPEG datasets in real layouts", add_help=add_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", required=True, type=Path, help="folder to write into (must be empty or new)")
    common.add_argument("--seed", default=0, type=int, help="random seed; the output is a function of it")
    subparsers = parser.add_subparsers(dest="layout", required=True, metavar="LAYOUT")

    def add_layout(layout, help_text):
        return subparsers.add_parser(
            layout, parents=[common], help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )

    imagefolder = add_layout("imagefolder", "classification set: OUTPUT/{train,val}/class_XXX/*.jpg")
    imagefolder.add_argument("--num-classes", default=10, type=int, help=f"number of classes (at most {MAX_CLASSES})")
    imagefolder.add_argument("--train-per-class", default=40, type=int, help="training images per class")
    imagefolder.add_argument("--val-per-class", default=10, type=int, help="validation images per class")
    imagefolder.add_argument("--image-size", default="64", type=parse_size, help="side, or WIDTHxHEIGHT")

    def add_num_classes(subparser, low=1):
        subparser.add_argument(
            "--num-classes",
            default=10,
            type=int,
            help=f"pictures come from classes 0 .. N-1 ({low} <= N <= {MAX_CLASSES})",
        )

    holidays = add_layout("holidays", "INRIA Holidays: OUTPUT/jpg/NNNNXX.jpg and OUTPUT/rotations.txt")
    add_num_classes(holidays)
    holidays.add_argument("--num-groups", default=20, type=int, help="number of scenes (queries)")
    holidays.add_argument("--images-per-group", default=3, type=int, help="largest group size, query included")
    holidays.add_argument("--image-size", default="96x72", type=parse_size, help="side, or WIDTHxHEIGHT")
    holidays.add_argument("--rotated-fraction", default=0.25, type=float, help="fraction of files stored rotated")

    ukbench = add_layout("ukbench", "UKBench: OUTPUT/full/ukbenchNNNNN.jpg, groups of 4")
    add_num_classes(ukbench)
    ukbench.add_argument("--num-groups", default=25, type=int, help="number of objects (4 images each)")
    ukbench.add_argument("--image-size", default="80x60", type=parse_size, help="side, or WIDTHxHEIGHT")

    copydays = add_layout("copydays", "Copydays: OUTPUT/{original,strong,distractors}/*.jpg, distractors.txt")
    add_num_classes(copydays)
    copydays.add_argument("--num-originals", default=12, type=int, help="number of original images")
    copydays.add_argument("--num-distractors", default=40, type=int, help="number of distractor images")
    copydays.add_argument("--image-size", default="96x72", type=parse_size, help="side, or WIDTHxHEIGHT")

    revisitop = add_layout("revisitop", "ROxford5k / RParis6k: OUTPUT/NAME/jpg/*.jpg and gnd_NAME.pkl")
    add_num_classes(revisitop, low=2)
    revisitop.add_argument("--name", default="roxford5k", choices=sorted(REVISITOP_PREFIXES), help="benchmark")
    revisitop.add_argument("--num-queries", default=5, type=int, help="number of queries")
    revisitop.add_argument("--num-database", default=40, type=int, help="database size (at least 5 per query)")
    revisitop.add_argument("--image-size", default="96x72", type=parse_size, help="side, or WIDTHxHEIGHT")

    duplicates = add_layout(
        "duplicates", "near-duplicates: OUTPUT/images/{a,b,c}/*.jpg and OUTPUT/duplicates.csv (the planted pairs)"
    )
    add_num_classes(duplicates)
    duplicates.add_argument("--num-originals", default=60, type=int, help="number of distinct pictures")
    duplicates.add_argument(
        "--duplicated-fraction", default=0.5, type=float, help="fraction of the pictures with 1 to 3 near-duplicates"
    )
    duplicates.add_argument("--image-size", default="96x72", type=parse_size, help="side, or WIDTHxHEIGHT")

    disc21 = add_layout("disc21", "DISC21: OUTPUT/{queries,references,training}/*.jpg, ground_truth.csv, lists")
    add_num_classes(disc21)
    disc21.add_argument("--num-references", default=60, type=int, help="number of reference images")
    disc21.add_argument("--num-matched", default=30, type=int, help="queries that are edited copies of references")
    disc21.add_argument("--num-unrelated", default=10, type=int, help="queries with no reference")
    disc21.add_argument("--num-training", default=40, type=int, help="number of training images")
    disc21.add_argument("--strength", default=1.0, type=float, help="edit strength in [0, 1]")
    disc21.add_argument("--image-size", default="96x72", type=parse_size, help="side, or WIDTHxHEIGHT")

    add_layout("all", "every layout with small defaults: OUTPUT/{imagenet,holidays,ukbench,copydays,revisitop}")
    return parser


def main(args):
    if args.layout == "imagefolder":
        written = make_imagefolder(
            args.output, args.num_classes, args.train_per_class, args.val_per_class, args.image_size, args.seed
        )
        summary = f"{len(written['train'])} training and {len(written['val'])} validation images"
    elif args.layout == "holidays":
        written = make_holidays(
            args.output,
            args.num_groups,
            args.images_per_group,
            args.image_size,
            args.rotated_fraction,
            args.num_classes,
            args.seed,
        )
        summary = f"{sum(len(group) for group in written['groups'])} images in {len(written['groups'])} groups"
    elif args.layout == "ukbench":
        written = make_ukbench(args.output, args.num_groups, args.image_size, args.num_classes, args.seed)
        summary = f"{len(written)} images"
    elif args.layout == "copydays":
        written = make_copydays(
            args.output, args.num_originals, args.num_distractors, args.image_size, args.num_classes, args.seed
        )
        summary = (
            f"{len(written['originals'])} originals, {len(written['queries'])} strong queries, "
            f"{len(written['distractors'])} distractors"
        )
    elif args.layout == "revisitop":
        written = make_revisitop(
            args.output, args.name, args.num_queries, args.num_database, args.image_size, args.num_classes, args.seed
        )
        summary = f"{args.name}: {len(written['qimlist'])} queries, {len(written['imlist'])} database images"
    elif args.layout == "duplicates":
        written = make_duplicates(
            args.output, args.num_originals, args.duplicated_fraction, args.image_size, args.num_classes, args.seed
        )
        copies = sum(len(group) - 1 for group in written["groups"])
        groups = len(written["groups"])
        summary = f"{len(written['images'])} images, {copies} of them near-duplicates in {groups} groups"
    elif args.layout == "disc21":
        written = make_disc21(
            args.output,
            args.num_references,
            args.num_matched,
            args.num_unrelated,
            args.num_training,
            args.image_size,
            args.strength,
            args.num_classes,
            args.seed,
        )
        summary = (
            f"{len(written['ground_truth'])} queries, {len(written['references'])} references, "
            f"{len(written['training'])} training images"
        )
    else:
        written = make_all(args.output, args.seed)
        summary = "layouts " + ", ".join(written)
    print(f"Wrote {summary} to {args.output}")


if __name__ == "__main__":
    parser = get_args_parser()
    args = parser.parse_args()
    try:
        main(args)
    except ValueError as error:
        parser.error(str(error))
