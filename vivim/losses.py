"""Training loss: the structure loss of PraNet as the released Vivim code effectively computes it.

loss = mean BCE(logits, g) + mean_b [1 - (Σ w·p·g + 1) / (Σ w·(p + g) − Σ w·p·g + 1)],
w = 1 + 5·|avgpool31(g) − g|, p = sigmoid(logits).

The released code meant a w-weighted BCE but passes `reduce='none'`, which PyTorch reads as "reduce", so
the BCE it trains with is the plain mean (spec §3.4). That is the default here; `weighted_bce=True` gives
the intended form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def boundary_weight(target: torch.Tensor, kernel: int = 31) -> torch.Tensor:
    """1 + 5·|local mean − target|: large near edges, 1 in flat regions."""
    return 1 + 5 * torch.abs(F.avg_pool2d(target, kernel_size=kernel, stride=1, padding=kernel // 2) - target)


def structure_loss(logits: torch.Tensor, target: torch.Tensor, weighted_bce: bool = False) -> torch.Tensor:
    """logits, target: (B, 1, H, W); target in [0, 1] (soft resized masks are fine)."""
    logits = logits.float()
    target = target.float()
    weight = boundary_weight(target)
    if weighted_bce:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = ((weight * bce).sum((2, 3)) / weight.sum((2, 3))).mean()
    else:
        bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target * weight).sum((2, 3))
    union = ((prob + target) * weight).sum((2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return bce + wiou.mean()
