"""A collection of unlabelled images: its listing, its held-out part, and the check of a resumed run's images."""

import hashlib

import pytest
from PIL import Image

from multigrain.images.collection import NO_CLASS, Unlabelled, read_collection
from multigrain.images.image_lists import read_image_list


@pytest.fixture
def photos(tmp_path):
    """20 small JPEG files in a folder and a sub-folder, and a text file that is not an image."""
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    for index in range(20):
        folder = root / "trip" if index % 2 else root
        Image.new("RGB", (8, 6), (index * 10, 0, 0)).save(folder / f"photo_{index:02d}.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_listed_recursively_and_the_held_out_part_is_fixed_by_the_names(photos, tmp_path):
    collection = read_collection(photos, val_fraction=0.25)
    names = sorted(
        [f"photo_{i:02d}.jpg" for i in range(0, 20, 2)] + [f"trip/photo_{i:02d}.jpg" for i in range(1, 20, 2)]
    )
    assert sorted(collection.training + collection.held_out) == names and collection.root == str(photos)
    by_hash = sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    assert sorted(collection.held_out) == sorted(by_hash[:5]) and len(collection.training) == 15
    assert set(collection.training).isdisjoint(collection.held_out)
    # The same images in another order (a list file) and another seed of the run: the same held-out part.
    (tmp_path / "list.txt").write_text("\n".join(reversed(names)) + "\n\n")
    listed = read_collection(tmp_path / "list.txt", photos, val_fraction=0.25)
    assert sorted(listed.held_out) == sorted(collection.held_out) and listed.root == str(photos)
    assert read_collection(photos, val_fraction=0.0).held_out == []

    images = collection.images("held_out")
    assert images.names == collection.held_out and images[0].size == (8, 6)
    unlabelled = Unlabelled(images)
    assert unlabelled.classes == [] and unlabelled[1][1] == NO_CLASS and len(unlabelled) == 5


def test_a_held_out_list_and_what_it_refuses(photos, tmp_path):
    listed = tmp_path / "held_out.txt"
    listed.write_text("trip/photo_03.jpg\n\nphoto_00.jpg\nphoto_02.jpg\nphoto_04.jpg\n")
    collection = read_collection(photos, val_list=listed, min_held_out=4)
    assert collection.held_out == ["photo_00.jpg", "photo_02.jpg", "photo_04.jpg", "trip/photo_03.jpg"]
    assert len(collection.training) == 16
    cases = [
        ("photo_00.jpg\nphoto_99.jpg\n", "line 2: photo_99.jpg is not an image of the collection"),
        ("photo_00.jpg\n\nphoto_00.jpg\n", "line 3: photo_00.jpg was already listed on line 1"),
    ]
    for text, message in cases:
        listed.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_collection(photos, val_list=listed)
    with pytest.raises(ValueError, match="--val-list .*missing.txt is not a file"):
        read_collection(photos, val_list=tmp_path / "missing.txt")


def test_too_few_held_out_or_training_images_are_refused_with_the_minimum(photos):
    with pytest.raises(ValueError, match="2 of the 20 images of --data-path .* are held out .* needs at least 4"):
        read_collection(photos, val_fraction=0.1, min_held_out=4)
    with pytest.raises(
        ValueError, match="has 15 training images \\(5 more held out\\), fewer than a global batch of 16"
    ):
        read_collection(photos, val_fraction=0.25, min_training=16)


def test_a_list_file_names_its_lines(photos, tmp_path):
    (tmp_path / "twice.txt").write_text("photo_00.jpg\n\nphoto_00.jpg\n")
    with pytest.raises(ValueError, match="--data-path .*twice.txt: photo_00.jpg is listed twice \\(line 3\\)"):
        read_image_list(tmp_path / "twice.txt", photos, images_flag="--data-path", root_flag="--data-root")
    with pytest.raises(ValueError, match="pass the folder its paths are relative to with --data-root"):
        read_collection(tmp_path / "twice.txt")


def test_a_changed_collection_is_refused_naming_the_images(photos, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    collection = read_collection(photos, val_fraction=0.25)
    stored = collection.fingerprint()
    collection.write_lists(run)
    assert (run / "held_out_images.txt").read_text().splitlines() == collection.held_out
    collection.check_unchanged(stored, run / "checkpoint.pth")  # the same images: nothing to say

    (photos / "trip" / "photo_01.jpg").unlink()
    Image.new("RGB", (8, 6)).save(photos / "new.jpg")
    changed = read_collection(photos, val_fraction=0.25)
    with pytest.raises(ValueError) as error:
        changed.check_unchanged(stored, run / "checkpoint.pth")
    message = str(error.value)
    assert f"{run / 'checkpoint.pth'} was trained on another collection" in message
    assert "new.jpg" in message and "trip/photo_01.jpg" in message and "removed" in message

    (run / "training_images.txt").unlink()
    (run / "held_out_images.txt").unlink()
    with pytest.raises(ValueError, match="training part: 15 → 15 images|held-out part: 5 → 5 images"):
        changed.check_unchanged(stored, run / "checkpoint.pth")
