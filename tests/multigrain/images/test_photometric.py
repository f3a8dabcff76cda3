import copy
import itertools
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision import transforms
from torchvision.transforms import functional as F

import presets
from benchmarks import data_pipeline
from multigrain.images.datasets import (
    RepeatedViews,
    SeededItems,
    SkipBadImages,
    WithIndex,
    collate_skipping_bad,
    collate_views,
)
from multigrain.images.image_io import load_rgb
from multigrain.images.photometric import (
    ALPHAS,
    FACTORS,
    NUM_PARAMS,
    ORDER,
    CropWithParams,
    PhotometricAugmentation,
)
from multigrain.images.transforms import IMAGENET_MEAN, IMAGENET_STD, Lighting, PILToHWCTensor
from sampler import DecodeOnceBatchSampler, RASampler, SeededBatches
from tools.synthetic_data import make_imagefolder

# PIL computes colour jitter in uint8, truncating after each of the three ops and rounding the grayscale mean of
# contrast; the device computes in float. Measured on the synthetic JPEGs and noise: at most 3.8/255 on a pixel,
# at most 1.8/255 on average over an image (PIL darker: the truncations), before lighting divides by 1.1.
MAX_DIFFERENCE = 5 / 255
MEAN_DIFFERENCE = 2.5 / 255
ADJUST = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)  # ColorJitter's ops 0, 1, 2
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def pil_path(crop, params, lighting=0.1):
    """The CPU path's photometric half (presets.ClassificationPresetTrain), with the factors, order and alphas
    of `params` instead of its own draws."""
    for op in params[ORDER].long().tolist():
        crop = ADJUST[op](crop, float(params[FACTORS][op]))
    image = F.convert_image_dtype(F.pil_to_tensor(crop), torch.float)
    image = Lighting(lighting).apply(image, params[ALPHAS]).clamp(0, 1)
    return F.normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def assert_close_to_pil(output, expected):
    """Normalised images (…, 3, H, W) equal up to PIL's uint8 rounding, in units of the [0, 1] pixel range."""
    difference = ((output - expected) * STD).abs()
    assert difference.max() <= MAX_DIFFERENCE, f"max difference {difference.max() * 255:.2f}/255"
    assert difference.flatten(-3).mean(-1).max() <= MEAN_DIFFERENCE


def crops_on_file(tmp_path, size=(64, 48)):
    """uint8 crops of real image files: synthetic JPEGs, and a PNG of uniform noise (every level, clamps)."""
    make_imagefolder(tmp_path / "folder", num_classes=4, train_per_class=2, val_per_class=1, image_size=(96, 72))
    noise = np.random.default_rng(0).integers(0, 256, size=(72, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    paths = sorted((tmp_path / "folder" / "train").rglob("*.jpg")) + [tmp_path / "noise.png"]
    return [load_rgb(path).resize(size, Image.BILINEAR) for path in paths]


def test_the_draw_is_colorjitters_then_lightings_from_the_same_generator():
    augmentation = PhotometricAugmentation(color_jitter=0.3, lighting=0.1)
    jitter = transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)
    for seed in range(20):
        torch.manual_seed(seed)
        params = augmentation.draw()
        torch.manual_seed(seed)
        order, brightness, contrast, saturation, hue = jitter.get_params(
            jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue
        )
        alphas = Lighting(0.1).draw()
        assert hue is None
        assert params.shape == (NUM_PARAMS,) and params.dtype == torch.float32
        assert params[FACTORS].tolist() == [brightness, contrast, saturation]
        assert params[ORDER].tolist() == [op for op in order.tolist() if op != 3]
        assert torch.equal(params[ALPHAS], alphas)
        state_after = torch.get_rng_state()
        torch.manual_seed(seed)
        augmentation.draw()
        assert torch.equal(torch.get_rng_state(), state_after)  # nothing more drawn: later draws stay the same too


def test_the_draws_have_colorjitters_ranges_and_order_probabilities():
    torch.manual_seed(0)
    draws = torch.stack([PhotometricAugmentation(color_jitter=0.5, lighting=0.2).draw() for _ in range(6000)])
    factors = draws[:, FACTORS]
    assert factors.min() >= 0.5 and factors.max() <= 1.5
    # Uniform: 10 bins of each factor, chi-square with 9 degrees of freedom below its 0.1% quantile (27.9).
    for column in factors.T:
        counts = torch.histc(column, bins=10, min=0.5, max=1.5)
        assert ((counts - 600) ** 2 / 600).sum() < 27.9
    # The 6 orders of the three ops equally likely: chi-square with 5 degrees of freedom below 20.5.
    orders = Counter(tuple(order) for order in draws[:, ORDER].long().tolist())
    assert set(orders) == set(itertools.permutations(range(3)))
    assert sum((count - 1000) ** 2 / 1000 for count in orders.values()) < 20.5
    alphas = draws[:, ALPHAS]
    assert alphas.mean(0).abs().max() < 4 * 0.2 / 6000**0.5
    assert ((alphas.std(0) / 0.2 - 1).abs() < 0.05).all()


def test_nothing_is_drawn_for_the_parts_that_are_off():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    params = PhotometricAugmentation(color_jitter=0.0, lighting=0.0).draw()
    assert torch.equal(torch.get_rng_state(), state)
    assert params.tolist() == [1, 1, 1, 0, 1, 2, 0, 0, 0]
    crop = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = F.normalize(crop / 255, IMAGENET_MEAN, IMAGENET_STD)
    output = PhotometricAugmentation(color_jitter=0.0, lighting=0.0)(crop, params.expand(2, -1))
    torch.testing.assert_close(output, expected)


def test_each_image_of_a_batch_is_the_pil_paths_with_its_own_parameters(tmp_path):
    crops = crops_on_file(tmp_path)
    augmentation = PhotometricAugmentation()
    torch.manual_seed(0)
    params = torch.stack([augmentation.draw() for _ in crops])
    # Every order once, and factors at the ends of their ranges.
    params[: len(crops) - 3, ORDER] = torch.tensor(list(itertools.permutations(range(3))), dtype=torch.float32)
    params[0, FACTORS], params[1, FACTORS] = torch.tensor([1.3, 0.7, 1.3]), torch.tensor([0.7, 1.3, 0.7])
    pixels = torch.stack([F.pil_to_tensor(crop) for crop in crops])
    output = augmentation(pixels, params)
    assert output.shape == (len(crops), 3, 48, 64) and output.dtype == torch.float32
    expected = torch.stack([pil_path(crop, p) for crop, p in zip(crops, params)])
    assert_close_to_pil(output, expected)
    # The test can tell orders apart: the same factors in the reverse order miss the tolerance on some image.
    reversed_params = params.clone()
    reversed_params[:, ORDER] = params[:, ORDER].flip(1)
    with pytest.raises(AssertionError):
        assert_close_to_pil(augmentation(pixels, reversed_params), expected)


def test_the_device_preset_gives_the_cpu_presets_sample_from_the_same_seed(tmp_path):
    cpu = presets.ClassificationPresetTrain(crop_size=40)
    device = presets.ClassificationPresetTrain(crop_size=40, photometric_on_device=True)
    assert cpu.photometric is None and isinstance(device.photometric, PhotometricAugmentation)
    names = [type(step).__name__ for step in device.transforms.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "PILToHWCTensor"]
    for seed, image in enumerate(crops_on_file(tmp_path, size=(96, 72))):
        torch.manual_seed(seed)
        expected = cpu(image)
        torch.manual_seed(seed)
        sample = device(image)
        assert isinstance(sample, CropWithParams) and sample.pixels.dtype == torch.uint8
        assert sample.pixels.shape == (40, 40, 3) and sample.params.shape == (NUM_PARAMS,)
        batch = CropWithParams(sample.pixels[None], sample.params[None])
        assert_close_to_pil(device.photometric.on_device(batch, "cpu")[0], expected)


def test_policies_keep_the_cpu_path():
    with pytest.raises(ValueError, match="'ra' runs on PIL images"):
        presets.ClassificationPresetTrain(crop_size=32, auto_augment_policy="ra", photometric_on_device=True)


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def test_the_batch_augmentation_reads_nothing_back_to_the_host():
    augmentation = PhotometricAugmentation()
    crops = CropWithParams(
        torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8), torch.stack([augmentation.draw() for _ in range(6)])
    )
    with CountOps() as counted:
        augmentation.on_device(crops, "cpu", torch.channels_last)
    assert counted.ops["mul"] > 0  # the mode sees the ops
    assert counted.ops["_local_scalar_dense"] == 0 and counted.ops["nonzero"] == 0 and counted.ops["item"] == 0


def test_a_loader_batch_is_augmented_in_the_memory_format_asked_for():
    augmentation = PhotometricAugmentation()
    torch.manual_seed(0)
    crops = CropWithParams(
        torch.randint(0, 256, (4, 12, 10, 3), dtype=torch.uint8), torch.stack([augmentation.draw() for _ in range(4)])
    )
    channels_last = augmentation.on_device(crops, "cpu", torch.channels_last)
    contiguous = augmentation.on_device(crops, "cpu")
    assert channels_last.shape == contiguous.shape == (4, 3, 12, 10)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and contiguous.is_contiguous()
    expected = augmentation(crops.pixels.permute(0, 3, 1, 2).contiguous(), crops.params)
    torch.testing.assert_close(channels_last, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(contiguous, expected, rtol=0, atol=1e-6)


def test_bad_batches_are_refused():
    augmentation = PhotometricAugmentation()
    params = torch.zeros(2, NUM_PARAMS)
    with pytest.raises(ValueError, match="uint8 images"):
        augmentation(torch.zeros(2, 3, 4, 4), params)
    with pytest.raises(ValueError, match=r"params \(2, 9\), got \(2, 7\)"):
        augmentation(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), params[:, :7])


def folder(tmp_path, transform, per_class=3):
    make_imagefolder(tmp_path, num_classes=2, train_per_class=per_class, val_per_class=1, image_size=(60, 44))
    return torchvision.datasets.ImageFolder(tmp_path / "train", transform, loader=load_rgb)


def test_a_seeded_sample_is_the_same_every_time_and_through_workers(tmp_path):
    preset = presets.ClassificationPresetTrain(crop_size=24, photometric_on_device=True)
    dataset = SeededItems(WithIndex(folder(tmp_path, preset)))
    first, again, other = dataset[(7, 2)], dataset[(7, 2)], dataset[(8, 2)]
    assert torch.equal(first[0].pixels, again[0].pixels) and torch.equal(first[0].params, again[0].params)
    assert first[1:] == again[1:] == other[1:]
    assert not torch.equal(first[0].params, other[0].params)

    batches = SeededBatches(torch.utils.data.BatchSampler(RASampler(len(dataset), reps=3), 4, drop_last=True), (0,))
    loaded = {
        workers: list(torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers))
        for workers in (0, 2)
    }
    assert len(loaded[0]) == 1
    for (crops, labels, ids), (crops_2, labels_2, ids_2) in zip(loaded[0], loaded[2]):
        assert isinstance(crops, CropWithParams) and crops.pixels.shape == (4, 24, 24, 3)
        assert crops.params.shape == (4, NUM_PARAMS)
        assert torch.equal(crops.pixels, crops_2.pixels) and torch.equal(crops.params, crops_2.params)
        assert torch.equal(labels, labels_2) and torch.equal(ids, ids_2)


def test_decode_once_with_the_device_augmentation_gives_the_cpu_paths_batches(tmp_path):
    """The same seeded decode-once loader with either preset: the same crops, flips and draws, so the batches
    agree up to PIL's rounding; a file that cannot be read is skipped under both."""
    (tmp_path / "train" / "class_000").mkdir(parents=True)
    (tmp_path / "train" / "class_000" / "broken.jpg").write_bytes(b"not a jpeg")
    images = folder(tmp_path / "data", None)
    images.samples.insert(0, (str(tmp_path / "train" / "class_000" / "broken.jpg"), 0))
    sampler = RASampler(len(images), reps=3, epoch_len_factor=3.0, shuffle=False)
    batches = {}
    for on_device in (False, True):
        preset = presets.ClassificationPresetTrain(crop_size=24, photometric_on_device=on_device)
        dataset = SkipBadImages(SeededItems(RepeatedViews(images, preset)))
        batch_sampler = SeededBatches(DecodeOnceBatchSampler(sampler, 9, drop_last=True), (0, 1))
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_views)
        batches[on_device] = list(loader)
        photometric = preset.photometric
    assert len(batches[True]) == 2
    assert batches[True][0][2].tolist() == [1, 1, 1, 2, 2, 2]  # image 0 is the broken file
    for (crops, labels, ids), (images_cpu, labels_cpu, ids_cpu) in zip(batches[True], batches[False]):
        assert isinstance(crops, CropWithParams) and crops.pixels.dtype == torch.uint8
        assert torch.equal(labels, labels_cpu) and torch.equal(ids, ids_cpu)
        assert_close_to_pil(photometric.on_device(crops, "cpu"), images_cpu)


def test_collate_skipping_bad_keeps_the_crops_and_their_parameters():
    augmentation = PhotometricAugmentation()
    samples = [
        (CropWithParams(torch.full((4, 4, 3), i, dtype=torch.uint8), augmentation.draw()), i, i) for i in range(3)
    ]
    crops, labels, ids = collate_skipping_bad([samples[0], None, samples[2]])
    assert crops.pixels[:, 0, 0, 0].tolist() == [0, 2] and labels.tolist() == [0, 2]
    assert torch.equal(crops.params, torch.stack([samples[0][0].params, samples[2][0].params]))


def test_the_data_pipeline_benchmark_measures_the_four_pipelines_and_their_stages():
    flags = ["--num-images", "8", "--image-size", "48x40", "--crop-size", "32", "-b", "6", "-j", "1", "--rounds", "1"]
    result = data_pipeline.main(data_pipeline.get_args_parser().parse_args(flags))
    pipelines = ["decode per copy", "decode once", "device aug, decode per copy", "device aug, decode once"]
    assert [result["counts"][name] for name in pipelines] == [[24]] * 4
    assert all(result["worker_ms"][name][0] > 0 for name in pipelines)
    stages = result["stages"]
    assert set(stages["CPU path"]) == {
        "decode", "random resized crop", "flip", "colour jitter", "to tensor", "lighting + clamp + normalise", "collate"
    }  # fmt: skip
    device_stages = {"decode", "random resized crop", "flip", "to tensor", "photometric draw", "collate"}
    assert set(stages["device aug"]) == device_stages
    per_copy, once = sum(stages["device aug"].values()), result["cost_ms"]["device aug, decode once"]
    assert result["cost_ms"]["device aug, decode per copy"] == per_copy
    assert once == pytest.approx(per_copy - stages["device aug"]["decode"] * 2 / 3)


def test_hwc_crops_stack_into_a_channels_last_batch_of_the_same_pixels(tmp_path):
    crops = crops_on_file(tmp_path, size=(20, 12))[:3]
    samples = [PILToHWCTensor()(crop) for crop in crops]
    assert samples[0].shape == (12, 20, 3) and samples[0].dtype == torch.uint8 and samples[0].is_contiguous()
    batch = torch.utils.data.default_collate(samples).permute(0, 3, 1, 2)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack([F.pil_to_tensor(crop) for crop in crops]))


@pytest.mark.cuda
def test_on_a_gpu_the_batch_is_the_cpus_and_nothing_waits_for_the_gpu():
    augmentation = PhotometricAugmentation()
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (16, 32, 24, 3), dtype=torch.uint8)
    crops = CropWithParams(pixels, torch.stack([augmentation.draw() for _ in range(16)]))
    expected = augmentation.on_device(crops, "cpu")
    on_gpu = copy.deepcopy(augmentation).cuda()
    pinned = CropWithParams(crops.pixels.pin_memory(), crops.params.pin_memory())
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        output = on_gpu.on_device(pinned, "cuda", torch.channels_last)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(output.cpu(), expected, rtol=0, atol=1e-5)
