"""The model core: prefix KV caching is exact, the training path equals the inference path,
masks and positions ignore padding, gradients reach the parameters, and it learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import fake_inputs

from vla.config import NAMED_CONFIGS, VLAConfig
from vla.model import ModelInputs, VLAModel


@pytest.fixture(scope="module", params=["flow", "diffusion"])
def model(request) -> VLAModel:
    torch.manual_seed(0)
    return VLAModel(VLAConfig.named("tiny", objective=request.param)).eval()


def test_cached_sampling_equals_recomputing_everything(model: VLAModel) -> None:
    inputs = fake_inputs(model.config)
    noise = torch.randn(
        3,
        model.config.action_horizon,
        model.config.action_dim,
        generator=torch.Generator().manual_seed(1),
    )
    cached = model.sample_actions(inputs, noise=noise, use_cache=True)
    uncached = model.sample_actions(inputs, noise=noise, use_cache=False)
    assert cached.shape == (3, model.config.action_horizon, 7) and torch.isfinite(cached).all()
    # the two paths multiply matrices of other shapes, so kernels round differently: a few
    # float32 ulps of the output (DDIM's chunk reaches |x| ~ 20 on random weights, where 1e-5 is
    # under 10 ulps and failed on an AMD EPYC); a wrong cache is off by orders more
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-6)
    assert not torch.allclose(cached, noise), "sampling must move the chunk away from the noise"


def test_training_path_equals_inference_path(model: VLAModel) -> None:
    inputs = fake_inputs(model.config)
    generator = torch.Generator().manual_seed(2)
    noisy = torch.randn(3, model.config.action_horizon, 7, generator=generator)
    time = torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        joint = model.predict_joint(inputs, noisy, time)
        cached = model.predict_with_cache(model.encode_prefix(inputs), inputs.state, noisy, time)
    torch.testing.assert_close(joint, cached, atol=1e-5, rtol=0)


def test_padding_does_not_change_actions() -> None:
    """Longer padding (other positions, more masked keys) must not change any prediction."""
    torch.manual_seed(0)
    short = VLAModel(VLAConfig.named("tiny", max_text_tokens=12)).eval()
    inputs = fake_inputs(short.config, batch=2, text_lengths=(7, 12))
    padded = ModelInputs(
        images=inputs.images,
        text_ids=torch.cat([inputs.text_ids, torch.randint(0, 500, (2, 9))], dim=1),
        text_mask=torch.cat([inputs.text_mask, torch.zeros(2, 9, dtype=torch.bool)], dim=1),
        state=inputs.state,
    )
    noise = torch.randn(2, short.config.action_horizon, 7)
    torch.testing.assert_close(
        short.sample_actions(inputs, noise=noise),
        short.sample_actions(padded, noise=noise),
        atol=1e-5,
        rtol=0,
    )


def test_loss_ignores_padded_chunk_positions(model: VLAModel) -> None:
    inputs = fake_inputs(model.config)
    actions = torch.randn(3, model.config.action_horizon, 7)
    noise, time = torch.randn_like(actions), torch.tensor([0.3, 0.6, 0.9])
    if model.config.objective == "diffusion":
        time = torch.tensor([10, 50, 90])
    pad = torch.zeros(3, model.config.action_horizon, dtype=torch.bool)
    pad[:, 6:] = True
    changed = actions.clone()
    changed[:, 6:] += 100.0  # garbage where the episode had ended
    with torch.no_grad():
        first = model.compute_loss(inputs, actions, pad, noise=noise, time=time)["loss"]
        second = model.compute_loss(inputs, changed, pad, noise=noise, time=time)["loss"]
    # the padded positions' inputs still flow through attention, so compare against the loss
    # computed by hand over the valid positions only
    assert torch.isfinite(first) and torch.isfinite(second)
    if model.config.objective == "flow":
        with torch.no_grad():
            noisy = time[:, None, None] * noise + (1 - time[:, None, None]) * changed
            prediction = model.predict_joint(inputs, noisy, time)
        expected = ((prediction - (noise - changed)) ** 2).mean(-1)[:, :6].mean()
        torch.testing.assert_close(second, expected, atol=1e-5, rtol=1e-5)


CPU_CONFIGS = [name for name in NAMED_CONFIGS if name != "pi0"]


@pytest.mark.parametrize("objective", ["flow", "diffusion"])
@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_gradients_reach_every_parameter_the_action_loss_uses(name: str, objective: str) -> None:
    torch.manual_seed(0)
    model = VLAModel(VLAConfig.named(name, objective=objective)).train()
    inputs = fake_inputs(model.config)
    loss = model.compute_loss(inputs, torch.randn(3, model.config.action_horizon, 7))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    last = model.geometry.num_layers - 1
    # Only the reasoning (language-model) loss uses these: the expert reads the last backbone
    # layer's keys/values, not its attention output, MLP or the final norm
    # (tests/test_chain_of_thought.py checks that with reasoning every parameter gets a gradient).
    unused = {"backbone.final_norm.weight"} | {
        name
        for name, _ in model.named_parameters()
        if name.startswith(f"backbone.layers.{last}.")
        and not any(part in name for part in ("q_proj", "k_proj", "v_proj", "input_layernorm"))
    }
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None and n not in unused]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable if p.grad is not None)


@pytest.mark.gpu
def test_pi0_size_config_runs_a_training_step_in_bf16() -> None:
    """The pi0-shaped config (PaliGemma-3B-sized backbone, ~300M expert) on a GPU, random weights."""
    model = VLAModel(VLAConfig.named("pi0")).to("cuda", torch.bfloat16).train()
    inputs = fake_inputs(model.config, batch=2, text_lengths=(20, 48))
    inputs = ModelInputs(
        images={k: v.to("cuda", torch.bfloat16) for k, v in inputs.images.items()},
        text_ids=inputs.text_ids.cuda(),
        text_mask=inputs.text_mask.cuda(),
        state=inputs.state.to("cuda", torch.bfloat16),
    )
    loss = model.compute_loss(
        inputs, torch.randn(2, model.config.action_horizon, 7, device="cuda", dtype=torch.bfloat16)
    )["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert sum(p.numel() for p in model.expert.parameters()) > 2e8


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = VLAModel(VLAConfig.named("tiny")).train()
    inputs = fake_inputs(model.config, batch=4, text_lengths=(10, 24, 5, 8))
    actions = (
        torch.randn(4, model.config.action_horizon, 7, generator=torch.Generator().manual_seed(3))
        * 0.5
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(4)
    fixed_noise = torch.randn(8, 4, model.config.action_horizon, 7, generator=generator)
    fixed_time = torch.rand(8, 4, generator=generator) * 0.999 + 0.001

    def evaluation_loss() -> float:
        with torch.no_grad():
            return (
                sum(
                    model.compute_loss(inputs, actions, noise=n, time=t)["loss"].item()
                    for n, t in zip(fixed_noise, fixed_time, strict=True)
                )
                / 8
            )

    before = evaluation_loss()
    for _ in range(150):
        optimizer.zero_grad()
        model.compute_loss(inputs, actions)["loss"].backward()
        optimizer.step()
    after = evaluation_loss()
    assert after < before / 3, f"loss went from {before:.3f} to {after:.3f}; expected a 3x drop"


def test_pretrained_backbone_loads_from_a_local_directory(tmp_path: Path) -> None:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = VLAConfig.named("tiny")
    torch.manual_seed(5)
    saved = PaliGemmaForConditionalGeneration(PaliGemmaConfig(**config.backbone_config))
    saved.save_pretrained(tmp_path / "paligemma")
    model = VLAModel(config.replace(pretrained_path=str(tmp_path / "paligemma"))).eval()
    for name, tensor in saved.model.language_model.state_dict().items():
        if name.startswith("layers."):
            torch.testing.assert_close(
                model.backbone.layers.state_dict()[name.removeprefix("layers.")],
                tensor,
                atol=0,
                rtol=0,
            )
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = saved.model.multi_modal_projector(
            saved.model.vision_tower(pixel_values=pixels).last_hidden_state
        )
        torch.testing.assert_close(model.backbone.embed_images(pixels), expected, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="saved with save_pretrained"):
        VLAModel(config.replace(pretrained_path=str(tmp_path / "missing")))


def test_config_errors_suggest_fixes() -> None:
    with pytest.raises(KeyError, match="did you mean 'action_horizon'"):
        VLAConfig.named("tiny", action_horizn=4)
    with pytest.raises(KeyError, match="did you mean 'tiny'"):
        VLAConfig.named("tiyn")
    with pytest.raises(ValueError, match="did you mean 'flow'"):
        VLAConfig.named("tiny", objective="flw")
    with pytest.raises(ValueError, match="image_size=32"):
        VLAModel(VLAConfig.named("tiny", image_size=32))
    assert VLAConfig.from_dict(VLAConfig.named("tiny").to_dict()) == VLAConfig.named("tiny")


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    inputs = fake_inputs(VLAConfig.named("tiny"))
    actions = torch.randn(3, 10, 7, generator=torch.Generator().manual_seed(7))
    noise, time = torch.randn_like(actions), torch.tensor([0.2, 0.5, 0.8])
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VLAModel(VLAConfig.named("tiny", activation_checkpointing=checkpointing)).train()
        model.compute_loss(inputs, actions, noise=noise, time=time)["loss"].backward()
        gradients.append(
            {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        )
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-6, rtol=1e-5, msg=name)


def test_ddpm_scheduler_samples_finite_chunks() -> None:
    torch.manual_seed(0)
    model = VLAModel(
        VLAConfig.named(
            "tiny", objective="diffusion", diffusion_scheduler="ddpm", num_inference_steps=5
        )
    ).eval()
    chunk = model.sample_actions(fake_inputs(model.config))
    assert chunk.shape == (3, model.config.action_horizon, 7) and torch.isfinite(chunk).all()
    assert type(model.scheduler).__name__ == "DDPMScheduler"
    with pytest.raises(ValueError, match="'ddim' or 'ddpm'"):
        VLAConfig.named("tiny", diffusion_scheduler="euler")


def test_build_creates_the_model_directly_in_the_requested_dtype() -> None:
    """`VLAModel.build` never materializes fp32 weights first (the pi0-size config would need
    13 GB for them): every parameter is created in bf16, and the model runs."""
    config = VLAConfig.named("tiny")
    model = VLAModel.build(config, "cpu", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in VLAModel(config).parameters()
    )
    assert torch.get_default_dtype() == torch.float32, "the default dtype is restored"
    inputs = fake_inputs(config, batch=2, text_lengths=(5, 9))
    inputs = ModelInputs(
        images={k: v.bfloat16() for k, v in inputs.images.items()},
        text_ids=inputs.text_ids,
        text_mask=inputs.text_mask,
        state=inputs.state.bfloat16(),
    )
    actions = model.eval().sample_actions(inputs)
    assert actions.dtype == torch.bfloat16 and torch.isfinite(actions).all()
