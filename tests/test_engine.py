"""The training step of engine.train_one_epoch: no host sync between progress lines, and a non-finite loss reported
at the next progress line or checkpoint, whose weights are never saved."""

import contextlib
import copy
import io

import pytest
import torch
import torch.utils.data

import engine
import presets
import train
import training_data
import utils
from benchmarks.host_syncs import count_host_syncs
from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.images.datasets import ImageFolder, WithIndex
from multigrain.images.image_io import load_rgb
from multigrain.images.photometric import NUM_PARAMS, CropWithParams, PhotometricAugmentation
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model
from multigrain.storage.checkpoint import load_checkpoint
from multigrain.training import preemption
from multigrain.training.optimizer import build_optimizer
from multigrain.training.training_state import TrainingState
from sampler import RASampler
from tests import non_finite_loss_worker
from tests.scripts import ONE_THREAD, run_script
from tools.synthetic_data import make_imagefolder

CPU = torch.device("cpu")
BATCH, STEPS, PRINT_FREQ = 6, 5, 3  # progress lines after steps 0, 3 and 4 (the last)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    make_imagefolder(root, num_classes=4, train_per_class=6, val_per_class=1, image_size=40, seed=2)
    return root


@pytest.fixture(scope="module")
def data(folder):
    """train.py's training data with the photometric augmentation on the device, and that augmentation."""
    transform = presets.ClassificationPresetTrain(crop_size=32, photometric_on_device=True)
    dataset = WithIndex(ImageFolder(str(folder / "train"), transform, loader=load_rgb))
    return dataset, transform.photometric


def test_train_py_gives_the_step_uint8_crops_unless_a_policy_needs_pil(folder):
    flags = ["--data-path", str(folder), "--train-crop-size", "32", "--device", "cpu"]
    dataset, _, photometric, _, _ = training_data.load_data(train.get_args_parser().parse_args(flags))
    crop, label, index = dataset[(0, 5)]  # SeededItems: (seed, item)
    assert isinstance(photometric, PhotometricAugmentation) and isinstance(crop, CropWithParams)
    assert crop.pixels.dtype == torch.uint8 and crop.pixels.shape == (32, 32, 3) and crop.params.shape == (NUM_PARAMS,)
    assert index == 5 and photometric.on_device(torch.utils.data.default_collate([crop]), CPU).shape == (1, 3, 32, 32)

    policy = train.get_args_parser().parse_args([*flags, "--auto-augment", "ta_wide"])
    dataset, _, photometric, _, _ = training_data.load_data(policy)
    image, _, _ = dataset[(0, 5)]
    assert photometric is None and image.dtype == torch.float32 and image.shape == (3, 32, 32)


def training(classif_weight, output_dir="", every_iters=None, device=CPU):
    """(model, criterion, optimizer, TrainingState) of a tiny run, as train.py builds them."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4).to(device)
    generator = torch.Generator(device=device)
    criterion = MultiGrainLoss(classif_weight, DistanceWeightedMiner(generator=generator), MarginLoss()).to(device)
    optimizer = build_optimizer(model, criterion, opt="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    state = TrainingState(
        output_dir, {}, {}, model=model, criterion=criterion, optimizer=optimizer, generator=generator, seed=0,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 30), epochs=1,
        schedule=preemption.CheckpointSchedule(every_iters=every_iters),
    )  # fmt: skip
    return model, criterion, optimizer, state


def syncs_of_an_epoch(data, classif_weight, amp, device):
    """Trains an epoch of STEPS steps on `device` with autocast `amp` ("off", "bfloat16", "float16": with a gradient
    scaler) from a DataLoader with a worker process (outside the count, as a run's workers are). Returns (the host
    syncs of each step, those between each step and the next: its progress line, the printed output, the metrics)."""
    dataset, photometric = data
    sampler = RASampler(len(dataset), reps=3, seed=0, epoch_len_factor=STEPS * BATCH / len(dataset))
    data_loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, sampler=sampler, num_workers=1, drop_last=True, pin_memory=device.type == "cuda"
    )
    assert len(data_loader) == STEPS
    amp_dtype = None if amp == "off" else getattr(torch, amp)
    scaler = torch.amp.GradScaler(device.type) if amp == "float16" else None
    model, criterion, optimizer, state = training(classif_weight, device=device)
    metric_logger = utils.MetricLogger()
    state.begin_epoch(0, STEPS, metric_logger)
    batch_starts, step_ends = [], []  # the count when each batch reaches the step, and after its after_step

    class Batches:  # the loader, counted, with its length (log_every's total)
        def __iter__(self):
            for batch in data_loader:
                batch_starts.append(syncs.count)
                yield batch

        def __len__(self):
            return len(data_loader)

    def after_step(steps_done, metric_logger, check_loss):
        state.after_step(steps_done, metric_logger, check_loss)
        step_ends.append(syncs.count)

    with count_host_syncs(device) as syncs, contextlib.redirect_stdout(io.StringIO()) as output:
        metrics = engine.train_one_epoch(
            model, criterion, optimizer, Batches(), device, 0, scaler=scaler, amp_dtype=amp_dtype,
            print_freq=PRINT_FREQ, metric_logger=metric_logger, after_step=after_step,
            photometric=copy.deepcopy(photometric).to(device),
        )  # fmt: skip
        end = syncs.count
    steps = [end - start for start, end in zip(batch_starts, step_ends)]
    between = [start - end for end, start in zip(step_ends, [*batch_starts[1:], end])]
    return steps, between, output.getvalue(), metrics


def check_syncs(steps, between, output, metrics, scaler):
    # The steps themselves, after_step's agreement included. float16's gradient scaler reads its check for
    # infinities back to skip the optimiser's step (torch's fused SGD, which skips on the device, corrupts the
    # momentum when the first step overflows).
    assert steps == [1 if scaler else 0] * STEPS, steps
    printed = [i for i in range(STEPS) if i % PRINT_FREQ == 0 or i == STEPS - 1]
    assert [i for i, count in enumerate(between) if count] == printed, between  # the reads of the progress lines
    assert output.count("Epoch: [0] [") == len(printed)
    assert metrics["train_loss"] > 0 and 0 <= metrics["train_acc1"] <= 100


@pytest.mark.parametrize("classif_weight", [0.5, 1.0])
@pytest.mark.parametrize(
    "amp", ["off", *(pytest.param(dtype, marks=pytest.mark.slow) for dtype in ("bfloat16", "float16"))]
)  # autocast on the CPU: 30 s each here
def test_no_host_sync_between_progress_lines(data, classif_weight, amp):
    steps, between, output, metrics = syncs_of_an_epoch(data, classif_weight, amp, CPU)
    check_syncs(steps, between, output, metrics, scaler=amp == "float16")  # reads of values, each a sync on a GPU
    assert ("train_margin_loss" in metrics) == (classif_weight < 1)


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["off", "bfloat16", "float16"])
def test_no_cuda_sync_between_progress_lines(data, amp):
    steps, between, output, metrics = syncs_of_an_epoch(data, 0.5, amp, torch.device("cuda"))
    check_syncs(steps, between, output, metrics, scaler=amp == "float16")  # set_sync_debug_mode's warnings


def test_the_meters_stay_on_the_device_until_read_and_their_state_is_exact():
    meters = utils.MetricLogger()
    values = [torch.tensor(0.1), torch.tensor(0.7, dtype=torch.float64), torch.tensor(1 / 3)]
    for value in values:
        meters.update(n=4, loss=value, lr=0.5)
    beta = torch.tensor(1.2)
    meters.update(beta=beta)
    beta.add_(1.0)  # the optimiser changes β in place: the meter keeps the value it was given
    assert isinstance(meters.meters["loss"].total, torch.Tensor)
    state = meters.state_dict()
    expected = 0.0
    for value in values:
        expected += float(value) * 4
    assert state["loss"] == {"count": 12, "total": expected, "window": [float(value) for value in values]}
    assert state["beta"]["window"] == [pytest.approx(1.2)] and state["lr"]["total"] == 6.0
    again = utils.MetricLogger()
    again.load_state_dict(state)
    again.update(n=4, loss=torch.tensor(2.0))
    meters.update(n=4, loss=torch.tensor(2.0))
    assert again.state_dict()["loss"] == meters.state_dict()["loss"]
    assert meters.meters["loss"].median == pytest.approx((0.7 + 1 / 3) / 2)  # of 0.1, 0.7, 1/3 and 2
    assert "loss: 0.5167 (" in str(meters)


def in_memory_batches(steps):
    torch.manual_seed(1)
    return [(torch.randn(BATCH, 3, 32, 32), torch.randint(4, (BATCH,)), torch.arange(BATCH) // 3)] * steps


def nan_at(criterion, iteration, first_step=0):
    """Makes the loss of step `iteration` NaN."""
    forward, calls = criterion.forward, iter(range(first_step, 10**6))

    def with_nan(*args):
        losses = forward(*args)
        if next(calls) == iteration:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    criterion.forward = with_nan


def test_a_non_finite_loss_stops_at_the_next_progress_line():
    model, criterion, optimizer, state = training(0.5)
    nan_at(criterion, 4)
    lines = io.StringIO()
    with contextlib.redirect_stdout(lines), pytest.raises(FloatingPointError) as error:
        engine.train_one_epoch(model, criterion, optimizer, in_memory_batches(9), CPU, 3, print_freq=3)
    assert str(error.value) == "non-finite loss nan at epoch 3, iteration 4: stopping"
    assert [line.split()[2] for line in lines.getvalue().splitlines()] == ["[0/9]", "[3/9]"]  # not the one of 6


def test_a_non_finite_loss_is_never_saved(tmp_path):
    model, criterion, optimizer, state = training(0.5, output_dir=str(tmp_path), every_iters=2)
    nan_at(criterion, 2)
    metric_logger = utils.MetricLogger()
    state.begin_epoch(0, 9, metric_logger)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(FloatingPointError, match="epoch 0, iteration 2:"):
        engine.train_one_epoch(
            model, criterion, optimizer, in_memory_batches(9), CPU, 0, print_freq=1000,
            metric_logger=metric_logger, after_step=state.after_step,
        )  # fmt: skip
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # step 3 ran on what step 2 spoiled
    saved = load_checkpoint(tmp_path / "checkpoint.pth")
    assert saved["in_epoch"]["step"] == 2  # the save after step 2 failed, and nothing after it was written
    assert all(torch.isfinite(value).all() for value in saved["model"].values() if value.is_floating_point())


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_stops_every_process_at_the_same_line(tmp_path):
    run = run_script("-m", non_finite_loss_worker.__name__, tmp_path, nproc=2, env=ONE_THREAD, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    message = f"non-finite loss nan at epoch 0, iteration {non_finite_loss_worker.BAD_ITERATION}: stopping"
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)] == [message, message]
