"""Table: diffusers scheduler X vs DiffsolveScheduler.from_config(X) inside real Stable
Diffusion pipelines (StableDiffusionPipeline / StableDiffusionImg2ImgPipeline assembled offline
from the tiny random parts of tests/test_diffusers.py), guidance 7.5, txt2img and img2img at
strength 0.3 / 0.5 / 1.0; final latents compared.

Run from the repository root:
    PYTHONPATH=src:tests python benchmarks/diffusers_conformance/pipelines.py [STEPS [LABEL ...]]
Prints one markdown row per scheduler (or per LABEL given): max abs / max relative difference.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import warnings

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

import test_diffusers as parts_of
from diffsolve.integrations.diffusers import DiffsolveScheduler


def schedulers(sd: dict) -> list:
    return [
        ("DDIM", diffusers.DDIMScheduler(**sd, clip_sample=False, set_alpha_to_one=False,
                                         steps_offset=1)),
        ("DDPM", diffusers.DDPMScheduler(**sd, clip_sample=False)),
        ("DDIM (defaults: clip_sample)", diffusers.DDIMScheduler(**sd)),
        ("PNDM (skip_prk_steps, SD's)", diffusers.PNDMScheduler(**sd, skip_prk_steps=True,
                                                                 steps_offset=1)),
        ("PNDM (PRK)", diffusers.PNDMScheduler(**sd, steps_offset=1)),
        ("Euler", diffusers.EulerDiscreteScheduler(**sd)),
        ("EulerAncestral", diffusers.EulerAncestralDiscreteScheduler(**sd)),
        ("Heun", diffusers.HeunDiscreteScheduler(**sd)),
        ("LMS", diffusers.LMSDiscreteScheduler(**sd)),
        ("DPM++2M", diffusers.DPMSolverMultistepScheduler(**sd)),
        ("DPM++2M Karras", diffusers.DPMSolverMultistepScheduler(**sd, use_karras_sigmas=True)),
        ("DPM++3M", diffusers.DPMSolverMultistepScheduler(**sd, solver_order=3)),
        ("SDE-DPM++2M", diffusers.DPMSolverMultistepScheduler(
            **sd, algorithm_type="sde-dpmsolver++")),
        ("DPM (dpmsolver, order 3, sigma_min)", diffusers.DPMSolverMultistepScheduler(
            **sd, algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min")),
        ("UniPC", diffusers.UniPCMultistepScheduler(**sd)),
        ("UniPC order 3", diffusers.UniPCMultistepScheduler(**sd, solver_order=3)),
        ("Euler (v-pred, trailing, zero SNR)", diffusers.EulerDiscreteScheduler(
            **sd, prediction_type="v_prediction", timestep_spacing="trailing",
            rescale_betas_zero_snr=True)),
        ("DEIS", diffusers.DEISMultistepScheduler(**sd)),
        ("KDPM2", diffusers.KDPM2DiscreteScheduler(**sd)),
        ("KDPM2Ancestral", diffusers.KDPM2AncestralDiscreteScheduler(**sd)),
        ("DPMSolverSinglestep", diffusers.DPMSolverSinglestepScheduler(**sd)),
        ("DPMSolverSinglestep order 3", diffusers.DPMSolverSinglestepScheduler(
            **sd, solver_order=3)),
        ("SASolver", diffusers.SASolverScheduler(**sd)),
        ("SASolver (3, 4)", diffusers.SASolverScheduler(**sd, predictor_order=3,
                                                        corrector_order=4)),
        ("EDMEuler", diffusers.EDMEulerScheduler()),
        ("EDMDPMSolverMultistep", diffusers.EDMDPMSolverMultistepScheduler()),
    ]


def main() -> None:
    warnings.simplefilter("ignore")
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    tmp = pathlib.Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        sample_size=16).eval()
    parts = {"vae": vae, "text_encoder": parts_of._text_encoder(),
             "tokenizer": parts_of._tokenizer(tmp), "unet": parts_of.tiny_cond_unet(),
             "safety_checker": None, "feature_extractor": None,
             "requires_safety_checker": False}
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    only = set(sys.argv[2:])
    for label, sch in schedulers(parts_of.SD_BETAS):
        if only and label not in only:
            continue
        row = []
        for mode in ("txt2img", 0.3, 0.5, 1.0):
            if mode != "txt2img" and label.startswith("PNDM"):
                row.append("n/a (diffusers' PNDM img2img)")
                continue
            outs = []
            for swap in (False, True):
                s = DiffsolveScheduler.from_config(sch) if swap else type(sch).from_config(
                    sch.config)
                if mode == "txt2img":
                    pipe, kw = StableDiffusionPipeline(scheduler=s, **parts), {}
                else:
                    pipe = StableDiffusionImg2ImgPipeline(scheduler=s, **parts)
                    kw = {"image": img, "strength": mode}
                pipe.set_progress_bar_config(disable=True)
                with torch.no_grad():
                    out = pipe("a cat", num_inference_steps=steps, guidance_scale=7.5,
                               height=16, width=16, generator=torch.Generator().manual_seed(0),
                               output_type="latent", **kw).images
                outs.append(out.double())
            a, b = outs
            d = float((a - b).abs().max())
            row.append(f"{d:.1e} / {d / float(a.abs().max()):.1e}")
        print(f"| {label} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
