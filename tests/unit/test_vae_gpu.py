"""The vae evaluator on CUDA: same protocol, draws from a CUDA generator, a smoke cell end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from dltbench import registry
from dltbench.runner import RunOptions, execute_cell, plan
from dltbench.tasks.vae import MLPVAE, draw, iwae_bound, load_binary

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CUDA = torch.device("cuda")


def test_draw_on_cuda_generators():
    g = torch.Generator(device=CUDA).manual_seed(0)
    c = Categorical(logits=torch.zeros(3, 5, device=CUDA))  # forked-RNG path on CUDA
    a = draw(c, (4,), g)
    b = draw(c, (4,), torch.Generator(device=CUDA).manual_seed(0))
    assert a.device.type == "cuda" and torch.equal(a, b)


def test_iwae_on_cuda_agrees_with_cpu_in_law():
    torch.manual_seed(0)
    model = MLPVAE(64, 8, (128,)).eval()
    x = load_binary("digits").test.x
    cpu = iwae_bound(model, x, 500, generator=torch.Generator().manual_seed(0), k_chunk=100)
    model_gpu, xg = model.to(CUDA), x.to(CUDA)
    gpu = iwae_bound(
        model_gpu, xg, 500, generator=torch.Generator(device=CUDA).manual_seed(0), k_chunk=500
    )
    assert gpu.device.type == "cuda"
    diff = cpu - gpu.cpu()
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / math.sqrt(len(x)) + 1e-3


@pytest.mark.parametrize("method", ["vae", "iwae", "cvae", "ae"])
def test_smoke_cell_on_cuda(method):
    task = registry.get_task("vae")
    cell = plan(task, [method], "quick", [0], smoke=True)[0]
    rec = execute_cell(cell, RunOptions(device="cuda", in_process=True))
    assert rec.status == "ok", rec.error
    assert rec.device.startswith("cuda") and rec.estimator["peak_gpu_memory_mb"] > 0
