"""diffusers integration: the scheduler adapter in real (tiny, random, offline) pipelines, the
model wrapper, and cross-checks against diffusers' own DPM-Solver++(2M) and DDIM schedulers."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)

from diffsolve import Grid, SolverOptionError, solve  # noqa: E402
from diffsolve.integrations.diffusers import DiffsolveScheduler, wrap  # noqa: E402
from diffsolve.integrations.diffusers_config import schedule_from_config  # noqa: E402
from diffsolve.solvers import get_solver  # noqa: E402

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def tiny_unet(seed: int = 0, out_channels: int = 3) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels,
                       layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def tiny_cond_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        norm_num_groups=8, attention_head_dim=4).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def run_scheduler(scheduler, model, x, steps, **set_kwargs):
    """The loop every diffusers pipeline runs."""
    scheduler.set_timesteps(steps, **set_kwargs)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # flow schedulers have none
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)  # flow ones have none
    for t in scheduler.timesteps:
        out = model(scale(x, t), t)
        x = scheduler.step(out, t, x).prev_sample
    return x


def unet_fn(unet):
    return lambda x, t: unet(x, t).sample


# --- config reading ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"beta_schedule": "linear"}, SD_BETAS,
                                    {"beta_schedule": "squaredcos_cap_v2"},
                                    {"beta_schedule": "linear", "rescale_betas_zero_snr": True}],
                         ids=["linear", "scaled_linear", "cosine", "zero_snr"])
def test_schedule_tables_match_diffusers(kwargs):
    ref = DDPMScheduler(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DDPM's clip_sample=True is reported and ignored
        ours = DiffsolveScheduler.from_config(ref.config)
    ac = ours.schedule.alphas_cumprod
    # the zero-SNR table ends in 0 in diffusers: ours keeps a tiny positive value there
    torch.testing.assert_close(ac.float()[:-1], ref.alphas_cumprod[:-1], rtol=2e-6, atol=1e-7)
    assert 0 < float(ac[-1]) <= 2.0**-24 or not kwargs.get("rescale_betas_zero_snr")


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 10, 25])
def test_timestep_spacing_matches_dpm_solver_multistep(spacing, steps):
    ref = DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=1, **SD_BETAS)
    ours = DiffsolveScheduler.from_config(ref.config, solver="dpmpp_2m")
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert ours.timesteps.tolist() == ref.timesteps.float().tolist()
    assert ours.num_inference_steps == steps
    torch.testing.assert_close(ours.sigmas, ref.sigmas.float(), rtol=1e-5, atol=0)


def test_multistage_solvers_list_internal_points():
    ours = DiffsolveScheduler(solver="heun")
    ours.set_timesteps(10)
    assert ours.order == 2
    assert len(ours.timesteps) == 2 * 9 + 1  # as diffusers' HeunDiscreteScheduler: 2n - 1
    # the corrector evaluates at the next node, so timesteps repeat as in diffusers' Heun
    heun = diffusers.HeunDiscreteScheduler(timestep_spacing="linspace")
    assert torch.all(ours.timesteps[1:] <= ours.timesteps[:-1])
    assert ours.timesteps.tolist()[:5] == [999.0, 899.0, 899.0, 799.0, 799.0]
    assert heun.config.timestep_spacing == "linspace"


# --- cross-checks against diffusers' own schedulers -------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_matches_diffusers(unet, prediction_type, steps):
    ref = DPMSolverMultistepScheduler(prediction_type=prediction_type, **SD_BETAS)
    ours = DiffsolveScheduler.from_config(ref.config, solver="dpmpp_2m")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = run_scheduler(ref, unet_fn(unet), x, steps)
        b = run_scheduler(ours, unet_fn(unet), x, steps)
    rel = float((a - b).abs().max() / a.abs().max())
    assert rel < 1e-5, rel


def test_ddim_matches_diffusers(unet):
    ref = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **SD_BETAS)
    ours = DiffsolveScheduler.from_config(ref.config, solver="ddim")
    ref.set_timesteps(10)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = run_scheduler(ref, unet_fn(unet), x, 10)
        b = run_scheduler(ours, unet_fn(unet), x, None, timesteps=ref.timesteps.tolist())
    assert ours.timesteps.tolist() == ref.timesteps.float().tolist()
    rel = float((a - b).abs().max() / a.abs().max())
    assert rel < 1e-5, rel


def test_wrap_and_solve_match_the_scheduler(unet):
    """diffsolve's own loop on the wrapped UNet = the scheduler driven by a pipeline loop."""
    cfg = DPMSolverMultistepScheduler(**SD_BETAS).config
    sched = DiffsolveScheduler.from_config(cfg, solver="dpmpp_3m")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = run_scheduler(sched, unet_fn(unet), x, 12)
        model = wrap(unet, cfg)
        b = solve(model, x, sched.grid, "dpmpp_3m", progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert model.nfe == len(sched.timesteps) == 12


def test_flow_matching_euler_matches_diffusers():
    """Flow-matching Euler = DDIM in the flow variables; the first node of diffusers' grid,
    t = 1 (lambda = -inf), is taken at t = 1 - 1e-9."""
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = DiffsolveScheduler.from_config(ref.config)
    assert ours.flow and ours.prediction == "flow" and ours.solver.name == "ddim"
    net = tiny_unet(4)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = run_scheduler(ref, unet_fn(net), x, 10)
        b = run_scheduler(ours, unet_fn(net), x, 10)
    assert torch.equal(ours.timesteps, ref.timesteps)
    rel = float((a - b).abs().max() / a.abs().max())
    assert rel < 1e-5, rel
    # another solver keeps the flow grid
    other = DiffsolveScheduler.from_config(ref.config, solver="heun")
    other.set_timesteps(10)
    assert other.timesteps[0] == ref.timesteps[0]


def test_dynamic_shifting_needs_mu():
    ours = DiffsolveScheduler.from_config(
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config, solver="dpmpp_2m")
    with pytest.raises(Exception, match="mu"):
        ours.set_timesteps(5)
    ours.set_timesteps(5, mu=0.8)
    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ref.set_timesteps(5, mu=0.8)
    torch.testing.assert_close(ours.timesteps[1:], ref.timesteps[1:], rtol=1e-5, atol=1e-3)


# --- real pipelines ---------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "seeds_2", "sa_solver", "dpmpp_3s",
                                    "euler_ancestral"])
def test_ddpm_pipeline_with_any_solver(unet, solver):
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SD_BETAS))
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver=solver)
    pipe.set_progress_bar_config(disable=True)

    def run(seed):
        return pipe(batch_size=2, num_inference_steps=6, output_type="np",
                    generator=torch.Generator().manual_seed(seed)).images

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (2, 8, 8, 3) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # determinism with a generator
    assert not np.array_equal(a, c)
    assert pipe.scheduler.step_index == len(pipe.scheduler.timesteps)


def test_ddim_pipeline_after_swap(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**SD_BETAS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="seeds_3")
    pipe.set_progress_bar_config(disable=True)
    img = pipe(batch_size=1, num_inference_steps=4, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 8, 8, 3) and np.isfinite(img).all()


def test_stochastic_noise_from_per_sample_generators_is_batch_invariant(unet):
    """A list of generators (one per sample) gives each sample its own noise, as diffusers'
    randn_tensor does; with `seed=` the per-sample streams do the same without generators."""
    for kwargs in ({}, {"seed": 7}):
        sched = DiffsolveScheduler(solver="seeds_1", **SD_BETAS, **kwargs)
        x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))

        def run(xb, seeds, sched=sched):
            sched.set_timesteps(5)
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            for t in sched.timesteps:
                with torch.no_grad():
                    eps = unet(xb, t).sample
                xb = sched.step(eps, t, xb, generator=gens).prev_sample
            return xb

        full = run(x, [10, 11, 12])
        alone = run(x[:1], [10])
        torch.testing.assert_close(full[:1], alone, rtol=1e-5, atol=1e-5)


def _tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3, "dog</w>": 4,
             "a": 5, "c": 6, "t": 7, "d": 8, "o": 9, "g": 10, "!": 11}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                                      model_max_length=8)


def _text_encoder():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(
        vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8, projection_dim=16, bos_token_id=0,
        eos_token_id=1, pad_token_id=1)
    return transformers.CLIPTextModel(cfg).eval()


def test_text_to_image_pipeline_with_guidance(tmp_path):
    """StableDiffusionPipeline assembled from tiny random parts (no download), CFG on."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        sample_size=16).eval()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=_text_encoder(), tokenizer=_tokenizer(tmp_path),
        unet=tiny_cond_unet(), scheduler=DPMSolverMultistepScheduler(**SD_BETAS),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="sa_solver")

    def run(seed):
        return pipe("a cat", num_inference_steps=5, guidance_scale=4.0, height=16, width=16,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images

    a, b = run(0), run(0)
    assert a.shape == (1, 16, 16, 3) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_wrap_conditional_unet_with_guidance():
    unet = tiny_cond_unet()
    cfg = DDPMScheduler(**SD_BETAS).config
    text = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    cond = {"encoder_hidden_states": text}
    uncond = {"encoder_hidden_states": torch.zeros(2, 4, 16)}
    model = wrap(unet, cfg, guidance_scale=5.0, cond=cond, uncond=uncond)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    point = model.schedule.point(float(model.schedule.lam(500.0)))
    with torch.no_grad():
        d = model.data(x, point)
        t = torch.full((2,), 500.0)
        e_c = unet(x, t, **cond).sample
        e_u = unet(x, t, **uncond).sample
    eps = e_u + 5.0 * (e_c - e_u)
    expected = (x - point.sigma * eps) / point.alpha
    torch.testing.assert_close(d, expected, rtol=1e-4, atol=1e-4)
    assert model.nfe == 1
    with torch.no_grad():
        out = solve(model, x, Grid.from_sigmas([14.6, 3.0, 0.5, 0.0], model.schedule),
                    "dpmpp_2m", progress=False)
    assert torch.isfinite(out.x).all()


def test_wrap_drops_learned_variance_channels():
    unet = tiny_unet(out_channels=6)
    model = wrap(unet, DDPMScheduler().config)
    x = torch.randn(1, 3, 8, 8)
    point = model.schedule.point(0.0)
    with torch.no_grad():
        d = model.data(x, point)
        eps = unet(x, torch.full((1,), point.t)).sample[:, :3]
    torch.testing.assert_close(d, (x - point.sigma * eps) / point.alpha)


# --- img2img, save/load, errors ---------------------------------------------------------------
def test_add_noise_matches_diffusers():
    ref = DDPMScheduler(**SD_BETAS)
    ours = DiffsolveScheduler.from_config(ref.config)
    x0 = torch.randn(3, 3, 4, 4)
    n = torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, n, t), ref.add_noise(x0, n, t),
                               rtol=1e-5, atol=1e-5)


def test_begin_index_runs_the_tail_of_the_grid(unet):
    """img2img: start at a later step; equals solving on the tail of the grid."""
    sched = DiffsolveScheduler(solver="dpmpp_2m", **SD_BETAS)
    sched.set_timesteps(10)
    start = 4
    sched.set_begin_index(start)
    x0 = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x = sched.add_noise(x0, noise, sched.timesteps[start:start + 1])
    with torch.no_grad():
        for t in sched.timesteps[start:]:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        tail = Grid.from_lambdas(sched.grid.lams[start:], sched.schedule)
        x_ref = sched.add_noise(x0, noise, sched.timesteps[start:start + 1])
        ref = solve(wrap(unet, sched.config), x_ref, tail, "dpmpp_2m", progress=False).x
    torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-6)


def test_cannot_begin_inside_a_multistage_step():
    sched = DiffsolveScheduler(solver="heun")
    sched.set_timesteps(5)
    sched.set_begin_index(1)  # the second (corrector) evaluation of step 0
    with pytest.raises(SolverOptionError, match="start of a solver step"):
        sched.step(torch.zeros(1, 3), sched.timesteps[1], torch.zeros(1, 3))


def test_save_and_load_round_trip(tmp_path, unet):
    sched = DiffsolveScheduler(solver="seeds_2", solver_options={"eta": 0.5}, seed=3, **SD_BETAS)
    sched.save_pretrained(tmp_path)
    again = DiffsolveScheduler.from_pretrained(tmp_path)
    assert again.solver == get_solver("seeds_2", eta=0.5)
    assert again.config.seed == 3 and again.config.beta_schedule == "scaled_linear"
    pipe = DDPMPipeline(unet=unet, scheduler=again)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.scheduler, DiffsolveScheduler)  # the pipeline keeps our scheduler
    assert loaded.scheduler.solver == get_solver("seeds_2", eta=0.5)


def test_errors_are_clear():
    with pytest.raises(SolverOptionError, match="Did you mean"):
        DiffsolveScheduler(solver="dpmpp_2n")
    with pytest.raises(SolverOptionError, match="no option"):
        DiffsolveScheduler(solver="ddim", solver_options={"eta": 1.0})
    with pytest.raises(SolverOptionError, match="final_sigmas_type"):
        DiffsolveScheduler(final_sigmas_type="one")
    sched = DiffsolveScheduler()
    with pytest.raises(SolverOptionError, match="set_timesteps"):
        sched.step(torch.zeros(1, 3), 999, torch.zeros(1, 3))
    sched.set_timesteps(2)
    with pytest.raises(SolverOptionError, match="not in this scheduler"):
        sched.step(torch.zeros(1, 3), 123.5, torch.zeros(1, 3))
    with pytest.raises(Exception, match="beta_schedule"):
        schedule_from_config({"beta_schedule": "sigmoid"})
    sched = DiffsolveScheduler(solver="ddim")
    sched.set_timesteps(1)
    x = sched.step(torch.zeros(1, 3), sched.timesteps[0], torch.ones(1, 3)).prev_sample
    assert torch.isfinite(x).all() and not math.isnan(float(x.sum()))
    with pytest.raises(SolverOptionError, match="done"):
        sched.step(torch.zeros(1, 3), sched.timesteps[0], x)
