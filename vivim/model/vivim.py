"""Vivim: SegFormer (MiT) stages per frame, ST-Mamba temporal layers after each stage, SegFormer all-MLP decoder.

Input (batch, T, 3, H, W) -> logits (batch, T, 1, H, W). Frames are folded into the batch for the per-frame parts
(b-major: index b*T + t) and unfolded into T-major token sequences for the temporal layers.
"""

from __future__ import annotations

from typing import Optional, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vivim.constants import output_frame_index, size_problem
from vivim.model.config import VivimConfig
from vivim.model.resize import BilinearResize
from vivim.model.segformer import OverlapPatchEmbed, SegFormerBlock, init_segformer_weights
from vivim.model.temporal import MambaLayer

OutputFrame = Optional[Union[str, int]]


def stage_sizes(config: VivimConfig) -> list[tuple[int, int]]:
    """(h, w) of each encoder stage's map for the configured input (the patch embeddings' conv arithmetic)."""
    sizes, (height, width) = [], config.input_hw
    for kernel, stride in zip(config.patch_sizes, config.strides):
        height, width = ((side + 2 * (kernel // 2) - kernel) // stride + 1 for side in (height, width))
        sizes.append((height, width))
    return sizes


class SegFormerHead(nn.Module):
    """All-MLP decoder, per frame: project each stage to E channels, upsample to stage-1 size, fuse, classify.

    SegFormer's order is project, upsample, concatenate (deepest stage first), then a 1x1 fuse convolution from 4E
    channels to E. All four steps are linear, and a 1x1 convolution commutes with a resize, so this computes the
    same map as the sum over stages of resize(fuse_i · (linear_i f_i + b_i)), with fuse_i · linear_i (E x C_i)
    formed from the weights on each call: the parameters and checkpoints are SegFormer's, but the 4E-channel
    concatenation at stage-1 size never exists. That map was the largest activation of a training step (1 GB
    for the paper model at batch 8 x 5 x 256^2, where training runs the decoder on every frame up to its
    BatchNorm), and the fuse convolution over it most of the decoder's arithmetic (benchmarks/RESULTS.md).
    """

    def __init__(self, in_dims: tuple[int, ...], dim: int, num_classes: int, dropout: float,
                 sizes: list[tuple[int, int]]):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, dim) for c in in_dims)
        # stage i's map is resized to stage 1's size; the weights for the configured input size are kept
        self.upsample = nn.ModuleList(BilinearResize(size, sizes[0]) for size in sizes[1:])
        self.linear_fuse = nn.Conv2d(dim * len(in_dims), dim, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def fused_maps(self, features: list[Tensor]) -> Tensor:
        """The fuse convolution's output (before BatchNorm) for per-stage maps (n, C_i, h_i, w_i)."""
        size = (features[0].shape[-2], features[0].shape[-1])
        dim, stages = self.linear_fuse.out_channels, len(features)
        fuse = self.linear_fuse.weight.flatten(1)  # (E, stages * E); its input blocks run deepest stage first
        fused: Optional[Tensor] = None
        for i, feature in enumerate(features):
            linear = cast(nn.Linear, self.linear_c[i])
            block = fuse[:, (stages - 1 - i) * dim:(stages - i) * dim]
            weight = (block @ linear.weight)[:, :, None, None]  # (E, C_i, 1, 1)
            x = F.conv2d(feature, weight, block @ linear.bias)
            x = x if i == 0 else self.upsample[i - 1](x, size)
            fused = x if fused is None else fused + x
        assert fused is not None
        return fused

    def forward(self, features: list[Tensor], keep: Optional[tuple[int, int, int]] = None) -> Tensor:
        """keep = (batch, frames, t): BatchNorm sees every frame, the layers after it only frame t of each clip."""
        x = self.batch_norm(self.fused_maps(features))
        if keep is not None:
            batch, frames, t = keep
            x = x.reshape(batch, frames, *x.shape[1:])[:, t]
        return self.classifier(self.dropout(F.relu(x)))


class VivimModel(nn.Module):
    def __init__(self, config: VivimConfig):
        super().__init__()
        self.config = config
        dims = config.embed_dims
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        self.patch_embeds = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.temporal = nn.ModuleList()
        in_chans, block_index = config.in_chans, 0
        for i, dim in enumerate(dims):
            self.patch_embeds.append(OverlapPatchEmbed(in_chans, dim, config.patch_sizes[i], config.strides[i]))
            self.blocks.append(nn.ModuleList(
                SegFormerBlock(dim, config.num_heads[i], config.sr_ratios[i], config.mlp_ratio, rates[block_index + j])
                for j in range(config.depths[i])))
            block_index += config.depths[i]
            self.temporal.append(nn.ModuleList(
                MambaLayer(dim, config.d_state, config.d_conv, config.expand, config.dsf_ratio)
                for _ in range(config.mamba_layers)))
            in_chans = dim
        self.decode_head = SegFormerHead(dims, config.decoder_dim, config.num_classes, config.decoder_dropout,
                                         stage_sizes(config))
        init_segformer_weights(self.patch_embeds)
        init_segformer_weights(self.blocks)
        init_segformer_weights(self.decode_head)

    @property
    def frames(self) -> int:
        return self.config.frames

    @property
    def img_size(self) -> Union[int, tuple[int, int]]:
        """The trained input size: N (square) or (height, width)."""
        return self.config.img_size

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.config.input_hw

    # -- per-frame part -------------------------------------------------------------------------------------------
    def _spatial_stage(self, i: int, x: Tensor) -> tuple[Tensor, int, int]:
        tokens, h, w = self.patch_embeds[i](x)
        for block in cast(nn.ModuleList, self.blocks[i]):
            tokens = block(tokens, h, w)
        return tokens, h, w  # the stage-final SegFormer LayerNorm is skipped, as in the official model

    def frame_features(self, frames: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, C1, H/4, W/4): everything before the first temporal layer, computed per frame.

        A stream computes this once per new frame and keeps the result in a ring of T slots.
        """
        tokens, h, w = self._spatial_stage(0, frames)
        return tokens.transpose(1, 2).reshape(frames.shape[0], -1, h, w)

    # -- temporal part ----------------------------------------------------------------------------------------------
    def _temporal_stage(self, i: int, maps: Tensor, batch: int, frames: int) -> Tensor:
        """maps (batch*T, C, h, w) -> the same after the stage's Mamba layers, mixing the T frames of each clip."""
        n, c, h, w = maps.shape
        tokens = maps.reshape(batch, frames, c, h * w).permute(0, 1, 3, 2).reshape(batch, frames * h * w, c)
        for layer in cast(nn.ModuleList, self.temporal[i]):
            tokens = layer(tokens, frames, h, w)
        return tokens.reshape(batch, frames, h * w, c).permute(0, 1, 3, 2).reshape(n, c, h, w)

    def forward_from_frame_features(self, features: Tensor, output_frame: OutputFrame = None,
                                    out_size: Optional[tuple[int, int]] = None) -> Tensor:
        """features (batch, T, C1, H/4, W/4) from `frame_features` -> logits like `forward`.

        `out_size` is the input's (H, W); it defaults to 4x the feature size (exact when H and W are multiples of 4).
        """
        batch, frames = features.shape[:2]
        maps = self._temporal_stage(0, features.flatten(0, 1), batch, frames)
        stage_outputs = [maps]
        for i in range(1, len(self.patch_embeds)):
            tokens, h, w = self._spatial_stage(i, maps)
            maps = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            maps = self._temporal_stage(i, maps, batch, frames)
            stage_outputs.append(maps)
        return self._decode(stage_outputs, batch, frames, output_frame, out_size)

    def _decode(self, stage_outputs: list[Tensor], batch: int, frames: int, output_frame: OutputFrame,
                out_size: Optional[tuple[int, int]]) -> Tensor:
        keep = None
        if output_frame is not None:  # decode one frame of each clip (in training: from BatchNorm on, see below)
            t = output_frame_index(output_frame, frames)
            if self.training and frames > 1:
                # except its BatchNorm, whose batch statistics span all B·T frames as in the official code (which
                # decodes every frame and supervises one): the layers after it run on frame t alone
                keep = (batch, frames, t)
            else:
                stage_outputs = [s.reshape(batch, frames, *s.shape[1:])[:, t] for s in stage_outputs]
            frames = 1
        logits = self.decode_head(stage_outputs, keep)
        size = out_size or (stage_outputs[0].shape[-2] * 4, stage_outputs[0].shape[-1] * 4)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.reshape(batch, frames, *logits.shape[1:])

    def forward(self, clip: Tensor, output_frame: OutputFrame = None) -> Tensor:
        """clip (batch, T, 3, H, W), ImageNet-normalised -> logits (batch, T, 1, H, W).

        With `output_frame` ('centre', 'newest' or an index) only that frame is decoded: (batch, 1, 1, H, W),
        equal to that frame of the full output (in eval mode; in training the decoder runs every frame up to its
        BatchNorm, whose batch statistics span all of them).
        """
        self._check_clip(clip)
        batch, frames = clip.shape[:2]
        features = self.frame_features(clip.flatten(0, 1))
        features = features.reshape(batch, frames, *features.shape[1:])
        return self.forward_from_frame_features(features, output_frame, out_size=(clip.shape[-2], clip.shape[-1]))

    def _check_clip(self, clip: Tensor) -> None:
        """A clip the network can take, or a ValueError/TypeError naming `clip` (instead of an error from deep in a
        convolution, or masks from a size the encoder cannot divide evenly)."""
        if not isinstance(clip, Tensor):
            raise TypeError(f"clip must be a torch.Tensor (batch, T, 3, H, W), got {type(clip).__name__}")
        if clip.dim() != 5:
            raise ValueError(f"clip must be (batch, T, C, H, W), got shape {tuple(clip.shape)}")
        batch, frames, channels, height, width = clip.shape
        if batch < 1 or frames < 1:
            raise ValueError(f"clip must hold at least one clip of at least one frame, got shape {tuple(clip.shape)}")
        if channels != self.config.in_chans:
            raise ValueError(f"clip has {channels} channels per frame; this model takes {self.config.in_chans} (RGB, "
                             f"normalised), got shape {tuple(clip.shape)}")
        if isinstance(height, int) and isinstance(width, int):  # symbolic sides (torch.export, dynamic) go unchecked
            problem = size_problem(height) or size_problem(width)
            if problem:
                raise ValueError(f"clip frames are {height}x{width}: each side {problem}")
        weight = cast(OverlapPatchEmbed, self.patch_embeds[0]).proj.weight
        if not clip.is_floating_point() or (clip.dtype != weight.dtype and not torch.is_autocast_enabled(clip.device.type)):
            raise TypeError(f"clip is {clip.dtype} but the model's weights are {weight.dtype}: pass "
                            f"clip.to({weight.dtype}) (or run under torch.autocast)")

    # -- deployment helpers -------------------------------------------------------------------------------------------
    def ssm_fp32_parameters(self) -> list[Tensor]:
        """A_log, D and the dt bias of every branch: kept fp32 in any precision (the scan's contract)."""
        params: list[Tensor] = []
        for stage in self.temporal:
            for layer in cast(nn.ModuleList, stage):
                for branch in cast(MambaLayer, layer).mixer.branch_list():
                    params += [branch.A_log, branch.D, branch.dt_proj.bias]
        return params

    def to_inference_dtype(self, dtype: torch.dtype) -> "VivimModel":
        """Cast for inference (e.g. fp16) while A_log, D and the dt bias stay fp32."""
        keep = {id(p) for p in self.ssm_fp32_parameters()}
        for p in self.parameters():
            if id(p) not in keep:
                p.data = p.data.to(dtype)
        for b in self.buffers():
            if b.is_floating_point():
                b.data = b.data.to(dtype)
        return self
