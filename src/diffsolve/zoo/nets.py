r"""Small networks for the model zoo: an 8×8 U-Net (digits) and a residual MLP (2-D toys).

Both compute the raw output F of an EDM-preconditioned denoiser (Karras et al. 2022, Table 1)

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
    c_noise = log(sigma) / 4,

so ``forward(x, c_noise)`` takes the already-scaled input c_in x and a vector of c_noise values
(shape (B,) or a scalar) and returns a tensor of x's shape. They plug into
:class:`diffsolve.models.Denoiser` with ``prediction="edm"``.

Time conditioning: c_noise is embedded with fixed Fourier features
gamma(c) = [sin(2 pi f_k c), cos(2 pi f_k c)]_k, f_k log-spaced in [f_min, f_max]
(Tancik et al. 2020), followed by a two-layer SiLU MLP; every residual block adds a learned
projection of that embedding to its hidden activations (Ho et al. 2020, DDPM U-Net).

Every network is built from a JSON-serialisable config dict (:func:`build_net`), and its
``config`` attribute holds the complete config (defaults filled in), so a model card can
rebuild it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.errors import IncompatibleModelError

UNET_DEFAULTS: dict[str, Any] = {
    "arch": "unet",
    "in_channels": 1,
    "channels": [32, 64],
    "num_res_blocks": 2,
    "attention": True,
    "emb_dim": 128,
    "fourier_dim": 64,
    "fourier_min_freq": 0.1,
    "fourier_max_freq": 32.0,
    "groups": 8,
    "dropout": 0.0,
}

MLP_DEFAULTS: dict[str, Any] = {
    "arch": "mlp",
    "in_dim": 2,
    "hidden": 128,
    "depth": 4,
    "emb_dim": 128,
    "fourier_dim": 64,
    "fourier_min_freq": 0.1,
    "fourier_max_freq": 32.0,
}


def _fill(defaults: Mapping[str, Any], config: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(defaults)
    unknown = set(config or {}) - set(defaults)
    if unknown:
        raise IncompatibleModelError(
            f"unknown {defaults['arch']} config keys {sorted(unknown)}; allowed: "
            f"{sorted(defaults)}")
    cfg.update(config or {})
    if cfg["arch"] != defaults["arch"]:
        raise IncompatibleModelError(f"config arch {cfg['arch']!r} != {defaults['arch']!r}")
    return cfg


class FourierEmbedding(nn.Module):
    """gamma(c) = [sin(2 pi f c), cos(2 pi f c)] with ``dim/2`` log-spaced fixed frequencies
    f in [min_freq, max_freq], then Linear -> SiLU -> Linear to ``emb_dim``.

    The frequencies are a non-persistent buffer (rebuilt from the config, not stored)."""

    def __init__(self, dim: int, emb_dim: int, min_freq: float, max_freq: float) -> None:
        super().__init__()
        if dim % 2 or dim <= 0:
            raise IncompatibleModelError(f"fourier_dim must be a positive even number, got {dim}")
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.lin1 = nn.Linear(dim, emb_dim)
        self.lin2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, c: Tensor) -> Tensor:
        arg = 2 * math.pi * c[:, None].to(self.freqs.dtype) * self.freqs[None, :]
        gamma = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
        return self.lin2(F.silu(self.lin1(gamma)))


def _as_batch(c_noise: Tensor | float, x: Tensor) -> Tensor:
    c = torch.as_tensor(c_noise, dtype=x.dtype, device=x.device)
    if c.ndim == 0:
        c = c.expand(x.shape[0])
    if c.shape != (x.shape[0],):
        raise IncompatibleModelError(
            f"c_noise must be a scalar or have shape ({x.shape[0]},), got {tuple(c.shape)}")
    return c


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W e;  out = skip(x) + conv(drop(SiLU(GN(h))))  (DDPM block).

    The second convolution is zero-initialised so every block starts as the identity map."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H·W positions, residual, zero-initialised output
    projection: out = x + W_o softmax(Q K^T / sqrt(C)) V with Q, K, V = W GN(x)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        att = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", att, v).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """A small U-Net for C×H×W images with H, W divisible by 2^(levels-1) (default 1×8×8).

    Levels run at resolutions H, H/2, ... with ``channels[i]`` channels and
    ``num_res_blocks`` residual blocks each (down path), ``num_res_blocks + 1`` on the up path
    with skip concatenation, stride-2 convolution to go down, nearest upsampling + conv to go
    up, and a middle of ResBlock -> (SelfAttention) -> ResBlock at the coarsest resolution.
    The output convolution is zero-initialised, so F = 0 at initialisation (D = c_skip x).

    Args:
        config: overrides of :data:`UNET_DEFAULTS`.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = _fill(UNET_DEFAULTS, config)
        self.config = cfg
        chs = [int(c) for c in cfg["channels"]]
        nrb, emb_dim, g, dr = int(cfg["num_res_blocks"]), int(cfg["emb_dim"]), int(
            cfg["groups"]), float(cfg["dropout"])
        self.time = FourierEmbedding(int(cfg["fourier_dim"]), emb_dim,
                                     float(cfg["fourier_min_freq"]), float(cfg["fourier_max_freq"]))
        self.stem = nn.Conv2d(int(cfg["in_channels"]), chs[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs = [chs[0]]
        cur = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(nrb):
                self.down.append(ResBlock(cur, ch, emb_dim, g, dr))
                cur = ch
                skip_chs.append(cur)
            if i < len(chs) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_chs.append(cur)
        self.mid1 = ResBlock(cur, cur, emb_dim, g, dr)
        self.mid_attn = SelfAttention(cur, g) if cfg["attention"] else nn.Identity()
        self.mid2 = ResBlock(cur, cur, emb_dim, g, dr)
        self.up = nn.ModuleList()
        for i in reversed(range(len(chs))):
            for _ in range(nrb + 1):
                self.up.append(ResBlock(cur + skip_chs.pop(), chs[i], emb_dim, g, dr))
                cur = chs[i]
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
        self.out_norm = nn.GroupNorm(min(g, cur), cur)
        self.out_conv = nn.Conv2d(cur, int(cfg["in_channels"]), 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: Tensor, c_noise: Tensor | float) -> Tensor:
        """F(x, c_noise); ``x`` is (B, C, H, W), ``c_noise`` a scalar or (B,)."""
        emb = self.time(_as_batch(c_noise, x))
        h = self.stem(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(m, ResBlock) else m(h)
        return self.out_conv(F.silu(self.out_norm(h)))


class MLP(nn.Module):
    """Residual MLP for D-dimensional points (default 2-D toy data).

    h_0 = W_in x;  h_{k+1} = h_k + W2 SiLU(W1 SiLU(LN(h_k)) + U_k e);  F = W_out SiLU(h_depth),
    with e the Fourier time embedding of c_noise and W_out zero-initialised.

    Args:
        config: overrides of :data:`MLP_DEFAULTS`.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = _fill(MLP_DEFAULTS, config)
        self.config = cfg
        d, hd, emb_dim = int(cfg["in_dim"]), int(cfg["hidden"]), int(cfg["emb_dim"])
        self.time = FourierEmbedding(int(cfg["fourier_dim"]), emb_dim,
                                     float(cfg["fourier_min_freq"]), float(cfg["fourier_max_freq"]))
        self.inp = nn.Linear(d, hd)
        self.norms = nn.ModuleList(nn.LayerNorm(hd) for _ in range(int(cfg["depth"])))
        self.lin1 = nn.ModuleList(nn.Linear(hd, hd) for _ in range(int(cfg["depth"])))
        self.embs = nn.ModuleList(nn.Linear(emb_dim, hd) for _ in range(int(cfg["depth"])))
        self.lin2 = nn.ModuleList(nn.Linear(hd, hd) for _ in range(int(cfg["depth"])))
        self.out = nn.Linear(hd, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor | float) -> Tensor:
        """F(x, c_noise); ``x`` is (B, D) (or (B, ...) flattening to D), ``c_noise`` (B,)."""
        shape = x.shape
        h2 = x.reshape(shape[0], -1)
        e = F.silu(self.time(_as_batch(c_noise, x)))
        h = self.inp(h2)
        for norm, l1, le, l2 in zip(self.norms, self.lin1, self.embs, self.lin2, strict=True):
            h = h + l2(F.silu(l1(F.silu(norm(h))) + le(e)))
        return self.out(F.silu(h)).reshape(shape)


ARCHS: dict[str, type[nn.Module]] = {"unet": UNet, "mlp": MLP}


def build_net(config: Mapping[str, Any]) -> nn.Module:
    """Build a zoo network from its config dict (``config["arch"]`` in {"unet", "mlp"})."""
    arch = config.get("arch")
    if arch not in ARCHS:
        raise IncompatibleModelError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch](config)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
