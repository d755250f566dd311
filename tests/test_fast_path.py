"""The inference fast path (vla/fast_path.py) against the eager reference, `sample_actions`.

On the CPU: the static path and torch.compile of its step, on the tiny config (GQA: 4 query heads
over 1 key/value head), fp32, through the model and through the policy and the server. On a GPU
(`gpu` marker): CUDA-graph replay, with and without compile, in bf16, including new inputs into
an already captured graph.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TINY_RESOLUTION,
    fake_inputs,
    observation,
    running,
    save_tiny_checkpoint,
)

from vla.config import VLAConfig
from vla.fast_path import MAX_GRAPHS, FastPathError, FastSampler
from vla.model import ModelInputs, VLAModel
from vla.policy import VLAPolicy

HORIZON, STEPS = 50, 10  # the shape: horizon 50, 10 flow steps


def tiny_model(**overrides: object) -> VLAModel:
    torch.manual_seed(0)
    config = VLAConfig.named("tiny", action_horizon=HORIZON, num_inference_steps=STEPS, **overrides)
    return VLAModel(config).eval()


def noise_for(model: VLAModel, batch: int, seed: int = 1, **where: object) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, model.config.action_horizon, model.config.action_dim)
    return torch.randn(shape, generator=generator).to(**where)


def test_static_path_equals_eager_on_padded_prompts_of_different_lengths() -> None:
    model = tiny_model()
    sampler = FastSampler(model, "static")
    for batch, lengths in ((3, (10, 24, 5)), (1, (7,))):  # a second shape reuses the sampler
        inputs = fake_inputs(model.config, batch=batch, text_lengths=lengths)
        noise = noise_for(model, batch)
        eager = model.sample_actions(inputs, noise=noise)
        fast = sampler.sample(inputs, noise)
        assert fast.shape == (batch, HORIZON, 7)
        torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)


def test_static_denoiser_equals_eager_over_a_cache_grown_by_a_chain() -> None:
    """Thinking and reuse hand the denoiser a prefix cache with reasoning tokens in it."""
    model = tiny_model()
    inputs = fake_inputs(model.config, batch=2, text_lengths=(9, 17))
    chain = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.arange(12)[None] < torch.tensor([[12], [6]])
    with_chain = ModelInputs(**{**inputs.__dict__, "reasoning_ids": chain, "reasoning_mask": mask})
    noise = noise_for(model, 2)
    cache = model.encode_prefix(with_chain)
    eager = model.sample_actions(with_chain, noise=noise, cache=cache)
    fast = FastSampler(model, "static").denoise(cache, with_chain.state, noise)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)


def test_torch_compile_path_equals_eager_on_the_cpu() -> None:
    model = tiny_model()
    inputs = fake_inputs(model.config, batch=2, text_lengths=(10, 24))
    noise = noise_for(model, 2)
    eager = model.sample_actions(inputs, noise=noise)
    sampler = FastSampler(model, "compile")
    first = sampler.sample(inputs, noise)
    again = sampler.sample(inputs, noise_for(model, 2, seed=5))  # the compiled step, new values
    torch.testing.assert_close(first, eager, rtol=0, atol=1e-4)
    torch.testing.assert_close(
        again, model.sample_actions(inputs, noise=noise_for(model, 2, seed=5)), rtol=0, atol=1e-4
    )


def test_what_the_fast_path_cannot_do_is_refused_by_name() -> None:
    model = tiny_model()
    with pytest.raises(FastPathError, match="captures a CUDA graph, but the model is on cpu"):
        FastSampler(model, "graph")
    with pytest.raises(FastPathError, match="must be one of"):
        FastSampler(model, "turbo")
    with pytest.raises(FastPathError, match="objective is 'diffusion'"):
        FastSampler(tiny_model(objective="diffusion"), "static")


def test_policy_fast_path_serves_the_eager_chunks(tmp_path: Path) -> None:
    """`VLAPolicy(fast_path=...)`: acting, reasoning reuse and thinking give eager's actions."""
    checkpoint = save_tiny_checkpoint(tmp_path)
    eager = VLAPolicy.from_pretrained(checkpoint)
    fast = VLAPolicy.from_pretrained(checkpoint, fast_path="static")
    observations = [observation(seed, size=TINY_RESOLUTION[0]) for seed in range(2)]
    noise = noise_for(eager.model, 2)
    for call in ({}, {"reasoning": ["SUBTASK: reach the cube", None]}, {"think": True}):
        expected, got = (
            eager.infer(observations, noise=noise, **call),
            fast.infer(observations, noise=noise, **call),
        )
        np.testing.assert_allclose(got["actions"], expected["actions"], rtol=0, atol=1e-4)
        assert got["reasoning"] == expected["reasoning"]
    with pytest.raises(ValueError, match="do not combine"):
        VLAPolicy.from_pretrained(checkpoint, fast_path="static", feature_cache_every=2)


def test_server_with_fast_path_sends_the_eager_chunk(tiny_checkpoint: Path) -> None:
    from vla.robot import PolicyClient  # websockets: imported here, so the gpu tests need none
    from vla.serving.server import reference_noise

    eager = VLAPolicy.from_pretrained(tiny_checkpoint)
    fast = VLAPolicy.from_pretrained(tiny_checkpoint, fast_path="static")
    obs = observation(0, size=TINY_RESOLUTION[0])
    expected = eager.infer([obs], noise=reference_noise(7, eager.config.action_horizon, 7))
    with running(fast) as server, PolicyClient(f"ws://127.0.0.1:{server.port}") as client:
        assert client.metadata["fast_path"] == "static"
        served = client.infer(obs, seed=7)["actions"]
    np.testing.assert_allclose(served, expected["actions"][0], rtol=0, atol=1e-4)


def test_vla_serve_refuses_a_cuda_graph_on_the_cpu(tiny_checkpoint: Path) -> None:
    command = [sys.executable, "-m", "vla.cli", "serve", "--checkpoint", str(tiny_checkpoint)]
    done = subprocess.run(
        [*command, "--fast-path", "graph", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "captures a CUDA graph, but the model is on cpu" in done.stderr


# ====================================================================================== GPU
def cuda_inputs(model: VLAModel, batch: int, seed: int) -> ModelInputs:
    inputs = fake_inputs(
        model.config, batch=batch, text_lengths=tuple(8 + 3 * i for i in range(batch)), seed=seed
    )
    return ModelInputs(
        images={k: v.to("cuda", torch.bfloat16) for k, v in inputs.images.items()},
        text_ids=inputs.text_ids.cuda(),
        text_mask=inputs.text_mask.cuda(),
        state=inputs.state.to("cuda", torch.bfloat16),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["static", "graph", "compile-graph"])
def test_cuda_fast_paths_equal_eager_in_bf16(mode: str) -> None:
    """Within bf16 rounding of eager; a captured graph fed new inputs computes for them (not a
    stale replay), and each batch size gets its own graph."""
    torch.manual_seed(0)
    config = VLAConfig.named("tiny", action_horizon=HORIZON, num_inference_steps=STEPS)
    model = VLAModel.build(config, "cuda", torch.bfloat16).eval()
    sampler = FastSampler(model, mode)
    for batch, seed in ((1, 0), (1, 1), (4, 2), (1, 3)):
        inputs = cuda_inputs(model, batch, seed)
        noise = noise_for(model, batch, seed=seed, device="cuda", dtype=torch.bfloat16)
        eager = model.sample_actions(inputs, noise=noise).float()
        fast = sampler.sample(inputs, noise).float()
        scale = eager.abs().max().item()
        assert (fast - eager).abs().max().item() <= 0.03 * scale + 0.02, (mode, batch, seed)
    if mode != "static":
        assert len(sampler._graphs) == 2 <= MAX_GRAPHS  # batch 1 and batch 4


@pytest.mark.gpu
def test_policy_graph_path_serves_within_bf16_of_eager(tmp_path: Path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path)
    eager = VLAPolicy.from_pretrained(checkpoint, device="cuda")
    fast = VLAPolicy.from_pretrained(checkpoint, device="cuda", fast_path="graph")
    observations = [observation(seed, size=TINY_RESOLUTION[0]) for seed in range(2)]
    noise = noise_for(eager.model, 2, device="cuda")
    for _ in range(2):  # capture, then replay
        got = fast.infer(observations, noise=noise)["actions"]
        np.testing.assert_allclose(
            got, eager.infer(observations, noise=noise)["actions"], rtol=1e-3, atol=1e-3
        )
