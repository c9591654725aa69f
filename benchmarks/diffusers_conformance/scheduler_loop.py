"""Table: diffusers scheduler X vs DiffsolveScheduler.from_config(X.config) in the scheduler
loop of tests/test_diffusers_conformance.py (tiny random UNet2DModel, 8 steps), for every
configuration of that test's CASES, txt2img and img2img at strength 0.3 / 0.5 / 1.0.

Run from the repository root:
    PYTHONPATH=src:tests python benchmarks/diffusers_conformance/scheduler_loop.py [CFG]
(CFG=1 in the environment: the network output is u + 7.5 (c - u) of two tiny UNets.)
Prints one markdown row per configuration: max abs / max relative difference.
"""

from __future__ import annotations

import os
import warnings

import torch

import test_diffusers_conformance as conf

STEPS = 8


def main() -> None:
    warnings.simplefilter("ignore")
    cond, uncond = conf._tiny_unet(0), conf._tiny_unet(1)

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = cond(x, t).sample
        if not os.environ.get("CFG"):
            return c
        u = uncond(x, t).sample
        return u + 7.5 * (c - u)

    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    image = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    for i, (name, cfg) in enumerate(conf.CASES):
        row = []
        for strength in (None, 0.3, 0.5, 1.0):
            ref, ours = conf._pair(name, cfg)
            mu = 0.8 if cfg.get("use_dynamic_shifting") else None
            with torch.no_grad():
                a = conf.pipeline_loop(ref, net, noise, STEPS, strength=strength, image=image,
                                       mu=mu)
                b = conf.pipeline_loop(ours, net, noise, STEPS, strength=strength, image=image,
                                       mu=mu)
            row.append(f"{float((a - b).abs().max()):.1e} / {conf.rel_diff(a, b):.1e}")
        shown = {k: (v.__name__ if callable(v) else v) for k, v in cfg.items()}
        print(f"| {i} {name.replace('Scheduler', '')} {shown} | " + " | ".join(row) + " |",
              flush=True)


if __name__ == "__main__":
    main()
