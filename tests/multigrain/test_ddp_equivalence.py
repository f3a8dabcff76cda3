import os
import subprocess
import sys

import pytest
import torch

from tests.multigrain import ddp_equivalence_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(nproc, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


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
    run = torchrun(nproc, "tests/multigrain/ddp_equivalence_worker.py", str(out))
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
