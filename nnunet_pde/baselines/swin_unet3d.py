"""Swin Unet3D (Cai et al. 2023), reimplemented from the paper.

Cai, Long, Han, Liu, Zheng, Yang, Chen: "Swin Unet3D: a three-dimensional medical image
segmentation network combining vision transformer and convolution", BMC Medical Informatics
and Decision Making 23:33 (2023), doi 10.1186/s12911-023-02129-z. The authors' code has no
licence; this is an independent implementation of the paper's idea: voxel segmentation as a
U-shaped network whose feature-extraction modules run a 3-D shifted-window transformer
(W-MSA then SW-MSA) *in parallel with* a convolution branch, so every level learns both
global (attention) and local (convolution) dependencies.

Layout, sized from the plans (``S`` stages, features ``f_s``, strides, kernel sizes):

* stage 0 (full resolution): two conv-IN-LeakyReLU (a convolutional stem; attention at full
  resolution would cost ``O(window^3)`` memory per voxel for little gain);
* stage ``s >= 1``: *patch merging* - a convolution whose kernel equals its stride (the
  planned stride, so anisotropic plans keep thin axes), i.e. the concatenation of the
  neighbouring tokens followed by a linear map, plus LayerNorm - then a hybrid block;
* hybrid block: ``x -> swin(x) + conv(x)`` where ``swin`` is a W-MSA block followed by an
  SW-MSA block (pre-norm, MLP ratio 4, relative position bias, 32 channels per head) and
  ``conv`` is two conv-IN-LeakyReLU with the planned kernel size;
* decoder level ``d``: *patch expanding* (transposed convolution, kernel = stride = planned
  stride), concatenation with the skip, a 1x1x1 linear projection to ``f_d``, then a hybrid
  block (``d >= 1``) or two conv-IN-LeakyReLU (``d = 0``);
* one 1x1x1 head per decoder level; deep supervision in nnU-Net's order (full resolution
  first). The heads exist either way, so the state_dict does not depend on deep supervision.

Window size: ``window`` voxels per axis (default 4), capped per stage and axis at the size
of that stage's feature map for the *planned patch*; an axis whose feature map is not larger
than its window is not shifted. Feature maps not divisible by the window are zero-padded
for the attention and cropped back, so any input size the convolutions accept works; the
shift masks are computed for the actual padded size.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_pde.baselines.blocks import conv_stack, init_weights
from nnunet_pde.baselines.plans import StagePlan, stage_plan

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

Triple = tuple[int, int, int]


def window_partition(x: torch.Tensor, window: Triple) -> torch.Tensor:
    """(B, Z, Y, X, C) with Z, Y, X divisible by ``window`` -> (B * n_windows, w_z*w_y*w_x, C)."""
    b, z, y, xx, c = x.shape
    wz, wy, wx = window
    x = x.view(b, z // wz, wz, y // wy, wy, xx // wx, wx, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wz * wy * wx, c)


def window_reverse(windows: torch.Tensor, window: Triple, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`window_partition`; ``shape`` is (B, Z, Y, X)."""
    b, z, y, xx = shape
    wz, wy, wx = window
    x = windows.view(b, z // wz, y // wy, xx // wx, wz, wy, wx, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, z, y, xx, -1)


@functools.lru_cache(maxsize=64)
def _shift_mask_cpu(padded: Triple, window: Triple, shift: Triple) -> torch.Tensor:
    """Additive attention mask (n_windows, N, N) that keeps a shifted window's attention
    within the regions that were contiguous before the cyclic shift (0 or -inf-like)."""
    img = torch.zeros(1, *padded, 1)
    cnt = 0
    slices = []
    for w, s in zip(window, shift, strict=True):
        if s > 0:
            slices.append((slice(0, -w), slice(-w, -s), slice(-s, None)))
        else:
            slices.append((slice(None),))
    for sz in slices[0]:
        for sy in slices[1]:
            for sx in slices[2]:
                img[:, sz, sy, sx, :] = cnt
                cnt += 1
    ids = window_partition(img, window).squeeze(-1)  # (nW, N)
    mask = ids.unsqueeze(1) - ids.unsqueeze(2)
    return mask.masked_fill(mask != 0, -1e4).masked_fill(mask == 0, 0.0)


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3-D windows with a learned relative position bias
    (one value per head and relative offset, as in Swin)."""

    def __init__(self, dim: int, num_heads: int, window: Triple) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        wz, wy, wx = window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wz - 1) * (2 * wy - 1) * (2 * wx - 1), num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(
            torch.meshgrid(torch.arange(wz), torch.arange(wy), torch.arange(wx), indexing="ij")
        ).flatten(1)  # (3, N)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
        rel = rel + torch.tensor([wz - 1, wy - 1, wx - 1])
        index = rel[..., 0] * (2 * wy - 1) * (2 * wx - 1) + rel[..., 1] * (2 * wx - 1) + rel[..., 2]
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: (B * n_windows, N, C); ``mask``: (n_windows, N, N) or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW, heads, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        attn_mask = bias.unsqueeze(0)
        if mask is not None:
            n_win = mask.shape[0]
            attn_mask = attn_mask.unsqueeze(0) + mask.view(1, n_win, 1, n, n)
            attn_mask = attn_mask.expand(bw // n_win, -1, -1, -1, -1).reshape(
                bw, self.num_heads, n, n
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock3D(nn.Module):
    """Pre-norm transformer block on (shifted) 3-D windows; tensors (B, C, Z, Y, X)."""

    def __init__(
        self, dim: int, num_heads: int, window: Triple, shift: Triple, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 4, 1)  # (B, Z, Y, X, C)
        b, z, y, xx, c = x.shape
        h = self.norm1(x)
        pads = [(-s) % w for s, w in zip((z, y, xx), self.window, strict=True)]
        if any(pads):
            h = F.pad(h, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(h.shape[1:4])
        shift = tuple(
            s if p > w else 0 for s, p, w in zip(self.shift, padded, self.window, strict=True)
        )
        mask = None
        if any(shift):
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
            mask = _shift_mask_cpu(padded, self.window, shift).to(h.device)
        windows = self.attn(window_partition(h, self.window), mask)
        h = window_reverse(windows, self.window, (b, *padded))
        if any(shift):
            h = torch.roll(h, shifts=shift, dims=(1, 2, 3))
        h = h[:, :z, :y, :xx, :]
        x = x + h
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 4, 1, 2, 3)


class HybridBlock(nn.Module):
    """Parallel transformer and convolution branches, summed: ``swin(x) + conv(x)``."""

    def __init__(self, dim: int, num_heads: int, window: Triple, kernel_size: Triple) -> None:
        super().__init__()
        shift = tuple(w // 2 for w in window)
        self.swin = nn.Sequential(
            SwinBlock3D(dim, num_heads, window, (0, 0, 0)),
            SwinBlock3D(dim, num_heads, window, shift),  # type: ignore[arg-type]
        )
        self.conv = conv_stack(2, dim, dim, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swin(x) + self.conv(x)


class PatchMerging3D(nn.Module):
    """Down-sampling by the planned stride: linear map of each stride-sized block of tokens
    (a convolution with kernel = stride), then LayerNorm over channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: Triple) -> None:
        super().__init__()
        self.reduction = nn.Conv3d(in_channels, out_channels, stride, stride)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class SwinDecoder(nn.Module):
    """Patch expanding + skip + projection + hybrid block per level; ``deep_supervision``
    is the switch nnU-Net's ``set_deep_supervision_enabled`` flips."""

    def __init__(
        self,
        plan: StagePlan,
        num_classes: int,
        windows: list[Triple],
        deep_supervision: bool,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        f = plan.features
        self.expand = nn.ModuleList()
        self.project = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for d in range(plan.n_stages - 2, -1, -1):  # deepest first
            stride = plan.strides[d + 1]
            self.expand.append(nn.ConvTranspose3d(f[d + 1], f[d], stride, stride))
            self.project.append(nn.Conv3d(2 * f[d], f[d], 1))
            if d == 0:
                self.blocks.append(conv_stack(2, f[d], f[d], plan.kernel_sizes[d]))
            else:
                heads = max(f[d] // 32, 1)
                self.blocks.append(HybridBlock(f[d], heads, windows[d], plan.kernel_sizes[d]))
        # seg_layers[i] is the head of decoder level i (0 = full resolution)
        self.seg_layers = nn.ModuleList(
            nn.Conv3d(f[d], num_classes, 1) for d in range(plan.n_stages - 1)
        )

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        levels: list[torch.Tensor] = []
        for i in range(len(self.blocks)):
            d = len(skips) - 2 - i
            x = self.expand[i](x)
            x = self.project[i](torch.cat((x, skips[d]), dim=1))
            x = self.blocks[i](x)
            levels.append(x)
        levels = levels[::-1]  # full resolution first
        if not self.deep_supervision:
            return self.seg_layers[0](levels[0])
        return [head(level) for head, level in zip(self.seg_layers, levels, strict=True)]


class SwinUNet3D(nn.Module):
    """Swin Unet3D for (batch, channels, z, y, x) input; see the module docstring."""

    def __init__(
        self,
        plan: StagePlan,
        num_input_channels: int,
        num_classes: int,
        window: int = 4,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if plan.n_stages < 2:
            raise ValueError("Swin Unet3D needs at least 2 resolution stages")
        f = plan.features
        cum = plan.cumulative_strides()
        windows: list[Triple] = [
            tuple(max(1, min(window, p // c)) for p, c in zip(plan.patch_size, cum[s], strict=True))  # type: ignore[misc]
            for s in range(plan.n_stages)
        ]
        self.windows = windows
        self.stem = conv_stack(2, num_input_channels, f[0], plan.kernel_sizes[0])
        self.down = nn.ModuleList()
        self.encoder_blocks = nn.ModuleList()
        for s in range(1, plan.n_stages):
            self.down.append(PatchMerging3D(f[s - 1], f[s], plan.strides[s]))
            heads = max(f[s] // 32, 1)
            self.encoder_blocks.append(HybridBlock(f[s], heads, windows[s], plan.kernel_sizes[s]))
        self.decoder = SwinDecoder(plan, num_classes, windows, deep_supervision)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = [x]
        for down, block in zip(self.down, self.encoder_blocks, strict=True):
            x = block(down(x))
            skips.append(x)
        return self.decoder(skips)


def _init(module: nn.Module) -> None:
    init_weights(module)
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_swin_unet3d(
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
    window: int = 4,
) -> SwinUNet3D:
    """Swin Unet3D sized from a 3-D configuration of nnU-Net's plans (default or ResEnc)."""
    plan = stage_plan(configuration_manager, "Swin Unet3D")
    return SwinUNet3D(
        plan,
        num_input_channels,
        num_output_channels,
        window=window,
        deep_supervision=enable_deep_supervision,
    )
