r"""Guided digits: the shipped digits U-Net guided by a weaker member of its hierarchy.

No shipped digits model is class-conditional, so guidance at a large scale is built the way
autoguidance does it (Karras et al. 2024, "Guiding a diffusion model with a bad version of
itself", arXiv 2406.02507, eq. 1): the classifier-free guidance formula with the strong model
as the "conditional" branch and a weaker model of the same data as the "unconditional" one,

    D_w(x; sigma) = D_weak(x; sigma) + w (D_main(x; sigma) - D_weak(x; sigma)),

run through :class:`~diffsolve.core.models.Denoiser`'s own guidance path (``guidance_scale``,
``cond``/``uncond``; both networks share EDM preconditioning, so guiding the raw output is
guiding D). One guided evaluation counts one NFE (as classifier-free guidance does).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..core.models import Denoiser
from .pretrained import load_model

DEFAULT_WEAK = "hier_digits_w8"


class GuidancePair(nn.Module):
    """``forward(x, c_noise, weak=False)``: the main network, or the weak one."""

    def __init__(self, main: nn.Module, weak: nn.Module) -> None:
        super().__init__()
        self.main = main
        self.weak = weak

    def forward(self, x: Tensor, c_noise: Tensor, weak: bool = False) -> Tensor:
        return (self.weak if weak else self.main)(x, c_noise)


def autoguided_digits(guidance_scale: float, *, main: str = "digits",
                      weak: str = DEFAULT_WEAK, **kwargs: Any) -> Denoiser:
    """The guided digits Denoiser of the module docstring (w = ``guidance_scale``; w = 1 is
    the main model alone). ``kwargs`` go to :func:`~diffsolve.zoo.pretrained.load_model`."""
    m, wk = load_model(main, **kwargs), load_model(weak, **kwargs)
    den = Denoiser(GuidancePair(m.net, wk.net), m.schedule, prediction="edm",
                   sigma_data=m.sigma_data, guidance_scale=float(guidance_scale),
                   cond={"weak": False}, uncond={"weak": True}, batched_guidance=False)
    den.shape = m.shape  # type: ignore[attr-defined]
    den.card = {"main": m.card, "weak": wk.card,  # type: ignore[attr-defined]
                "guidance": f"autoguidance w={guidance_scale} ({main} over {weak})"}
    return den
