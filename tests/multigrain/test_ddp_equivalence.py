import pytest
import torch

from tests.multigrain import ddp_equivalence_worker as worker
from tests.scripts import ONE_THREAD, run_script

pytestmark = pytest.mark.slow  # torchrun


def single_process_first_step():
    model, criterion = worker.build()
    images, labels, ids = worker.global_batch()
    logits, embeddings = model(images)
    losses = criterion(logits, embeddings, labels, ids)
    losses["loss"].backward()
    return losses, worker.gradients(model, criterion)


@pytest.mark.parametrize("nproc", [2, 3])
def test_global_batch_loss_and_gradients_equal_one_process(tmp_path, nproc):
    out = tmp_path / "ddp.pt"
    run = run_script("-m", worker.__name__, out, nproc=nproc, env=ONE_THREAD, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    ddp = torch.load(out, weights_only=True)
    losses, grads = single_process_first_step()

    assert losses["margin_loss"].item() > 0  # the triplets pair copies that sit on different ranks
    torch.testing.assert_close(ddp["loss"], losses["loss"].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp["margin_loss"], losses["margin_loss"].detach(), rtol=1e-5, atol=1e-6)
    assert grads.keys() == ddp["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # beta moved, and identically on every rank
    betas = ddp["betas"]
    assert len(betas) == nproc and torch.all(betas == betas[0]) and betas[0].item() != pytest.approx(1.2)
