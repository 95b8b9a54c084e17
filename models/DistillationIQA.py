"""The CVRKD-IQA network: a frozen ResNet-50, per-stage 1x1 convs, two MLP-Mixers, a regressor.

The FR-teacher and the NAR-student are two instances of `DistillationIQANet`; they differ only in what
is passed as the reference (the pixel-aligned HQ image or a non-aligned HQ image of other content).
Parameter names follow the authors' released checkpoints exactly, so their files load as they are.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck, ResNet

from common.errors import UserError
from common.files import safe_torch_load

STAGE_CHANNELS = (256, 512, 1024, 2048)
TOKENS = 49  # 7x7 positions after the per-stage pooling
EXPANSION = 4

# Keys present in the authors' released checkpoints that the forward pass never uses (HyperIQA leftovers and
# an unused PReLU/BatchNorm pair in the regressor). They are dropped by name when loading.
UNUSED_CHECKPOINT_KEYS = frozenset(
    [f"feature_extractor.lda{i}_pool.0.weight" for i in (1, 2, 3)]
    + [f"feature_extractor.lda{i}_fc.{p}" for i in (1, 2, 3, 4) for p in ("weight", "bias")]
    + ["regressor.relu1.weight", "regressor.bn1.weight", "regressor.bn1.bias"]
)


class ResNet50Backbone(ResNet):
    """torchvision's ResNet-50 without `fc`/`avgpool`, returning the outputs of its four stages."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.fc
        del self.avgpool

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages


def imagenet_weights_cache_path() -> Path:
    """Where torchvision keeps the ImageNet ResNet-50 weights (`IMAGENET1K_V1`)."""
    url = ResNet50_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def download_imagenet_weights(timeout_s: float = 30) -> dict[str, Tensor]:
    """Download torchvision's ImageNet ResNet-50 weights (`IMAGENET1K_V1`, what the original used) into its
    cache and return them. The connection and each read wait at most `timeout_s` seconds; any failure (offline,
    timeout, SSL, a damaged file) is a `UserError` saying "downloading them failed (<error>)"."""
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # never hang on a network that drops packets
    try:
        return ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as err:  # offline: URLError, timeouts, SSL errors ...
        raise UserError(f"downloading them failed ({type(err).__name__}: {err})") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def load_backbone_weights(backbone: ResNet50Backbone, pretrained: bool | str | os.PathLike) -> None:
    """Fill the backbone: `False` leaves it random, `True` takes torchvision's ImageNet weights, a path a file."""
    if pretrained is False or pretrained is None:
        return
    if pretrained is True:
        cache = imagenet_weights_cache_path()
        if cache.is_file():
            state = torch.load(cache, map_location="cpu", weights_only=True)
        else:
            try:
                state = download_imagenet_weights()
            except UserError as err:
                raise UserError(
                    f"cannot get the ImageNet ResNet-50 weights: they are not in torchvision's cache ({cache}) "
                    f"and {err}. Put the file there, pass a local file with --pretrained PATH, or use "
                    "--pretrained false for a random backbone."
                ) from None
    else:
        path = Path(pretrained)
        expected = "expected a torchvision ResNet-50 state dict"
        if not path.is_file():
            raise UserError(f"--pretrained: backbone weights file not found: {path} ({expected})")
        state = safe_torch_load(path, context="--pretrained: ")
        state = state.get("state_dict", state) if isinstance(state, Mapping) else state
        if not isinstance(state, Mapping) or not state or \
                not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
            raise UserError(f"--pretrained {path} is not a ResNet-50 state dict ({expected}: names -> tensors)")
        _load_backbone_state(backbone, state, f"--pretrained {path}")
        return
    _load_backbone_state(backbone, state, "the ImageNet ResNet-50 weights")


def _load_backbone_state(backbone: ResNet50Backbone, state: Mapping[str, Tensor], where: str) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (older torchvision files have none)
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{where} does not fit ResNet-50 (expected a torchvision ResNet-50 state dict): "
                        f"missing keys {_short_list(missing)}; unexpected keys {_short_list(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} (ResNet-50 {tuple(own[k].shape)})"
             for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise UserError(f"{where} does not fit ResNet-50: tensors of other shapes {_short_list(wrong)}")
    backbone.load_state_dict(_checked_dtypes(state, own, where), strict=True)


class TokensFromMap(nn.Module):
    """[b, c, 7, 7] -> [b, 49, c]: each spatial position becomes a token (patch size 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class MeanOverTokens(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


class PreNormResidual(nn.Module):
    """x + fn(LayerNorm(x)); `fn` and `norm` keep the checkpoint's parameter names."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x)) + x


def _feed_forward(dim: int, hidden: int, layer: type[nn.Module]) -> nn.Sequential:
    # Indices 0 and 3 hold the weights, as in the released checkpoints; dropout is 0.
    return nn.Sequential(layer(dim, hidden), nn.GELU(), nn.Dropout(0.0), layer(hidden, dim), nn.Dropout(0.0))


def _token_conv(in_ch: int, out_ch: int) -> nn.Conv1d:
    return nn.Conv1d(in_ch, out_ch, kernel_size=1)


class MLPMixerEncoder(nn.Module):
    """MLP-Mixer over the 49 positions of a [b, in_channels, 7, 7] map, returning inner features and a code."""

    def __init__(self, in_channels: int, dim: int, depth: int, distillation_layer: int) -> None:
        super().__init__()
        blocks = [
            nn.Sequential(
                PreNormResidual(dim, _feed_forward(TOKENS, TOKENS * EXPANSION, _token_conv)),
                PreNormResidual(dim, _feed_forward(dim, dim * EXPANSION, nn.Linear)),
            )
            for _ in range(depth)
        ]
        self.mlp = nn.Sequential(
            TokensFromMap(), nn.Linear(in_channels, dim), *blocks, nn.LayerNorm(dim), MeanOverTokens()
        )
        self.distillation_layer = distillation_layer

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        inner = []
        for step in self.mlp:
            x = step(x)
            inner.append(x)
        k = self.distillation_layer
        # The last k steps before the final LayerNorm (fewer if the sequence is shorter than k).
        return inner[-k - 2 : -2], x


class Regressor(nn.Module):
    """Linear(512->256) -> Linear(256->1), no activation in between (as the authors' network), run in fp32
    under autocast.

    `bn1` is never applied: it exists only so that the checkpoint's `regressor.bn1.running_*` buffers
    have a place to load into and are written back unchanged.
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(in_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden, affine=False)
        self.l2 = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The score, computed in the weights' precision (fp32) also under autocast: in fp16 a score of the
        order of 1000 (PIPAL's labels) would be rounded to steps of 1 before the loss and the metrics."""
        no_autocast = (torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda")
                       else contextlib.nullcontext())  # e.g. meta tensors: no autocast there
        with no_autocast:
            return self.l2(self.l1(x.to(self.l1.weight.dtype))).squeeze(-1)


class DistillationIQANet(nn.Module):
    """CVRKD-IQA network: `forward(LQ_patches, ref_patches) -> (diff_inner, lq_inner, pred)`.

    Inputs are `[b, p, 3, h, w]` with p = `self_patch_num`; `pred` is `[b]`.
    """

    def __init__(
        self,
        self_patch_num: int = 10,
        lda_channel: int = 64,
        encode_decode_channel: int = 64,
        MLP_depth: int = 9,  # noqa: N803 (the original's argument name)
        distillation_layer: int = 9,
        pretrained: bool | str | os.PathLike = True,
        backbone_bn_eval: bool = False,
    ) -> None:
        super().__init__()
        self.self_patch_num = self_patch_num
        self.lda_channel = lda_channel
        self.backbone_bn_eval = backbone_bn_eval
        dim = 4 * encode_decode_channel

        self.feature_extractor = ResNet50Backbone()
        for i, channels in enumerate(STAGE_CHANNELS, start=1):
            process = nn.Sequential(nn.Conv2d(channels, lda_channel, kernel_size=1), nn.AdaptiveAvgPool2d(7))
            setattr(self, f"lda{i}_process", process)
        in_channels = len(STAGE_CHANNELS) * self_patch_num * lda_channel
        self.MLP_encoder_lq = MLPMixerEncoder(in_channels, dim, MLP_depth, distillation_layer)
        self.MLP_encoder_diff = MLPMixerEncoder(in_channels, dim, 2 * MLP_depth, distillation_layer)
        self.regressor = Regressor(2 * dim, dim)

        self._init_weights()
        load_backbone_weights(self.feature_extractor, pretrained)
        for param in self.feature_extractor.parameters():
            param.requires_grad = False

    def _init_weights(self) -> None:
        heads = [getattr(self, f"lda{i}_process") for i in range(1, 5)]
        heads += [self.MLP_encoder_lq, self.MLP_encoder_diff, self.regressor]
        for head in heads:
            for module in head.modules():
                # The token-mixing Conv1d layers keep PyTorch's default init, as in the authors' network.
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in")
                    module.weight.data.mul_(0.1)
                    nn.init.zeros_(module.bias)
        for module in self.feature_extractor.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> DistillationIQANet:
        """As `nn.Module.train`; with `backbone_bn_eval` the backbone's BatchNorm keeps its running statistics."""
        super().train(mode)
        if mode and self.backbone_bn_eval:
            for module in self.feature_extractor.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the frozen backbone."""
        return [p for name, p in self.named_parameters() if not name.startswith("feature_extractor.")]

    def _check_patches(self, patches: Tensor, what: str) -> None:
        if patches.dim() != 5 or patches.shape[1] != self.self_patch_num or patches.shape[2] != 3:
            raise ValueError(
                f"{what} must be [batch, self_patch_num={self.self_patch_num}, 3, h, w], got {list(patches.shape)}"
            )

    def encode_patches(self, patches: Tensor) -> list[Tensor]:
        """Per-stage codes of `[b, p, 3, h, w]` patches: four `[b, p*lda_channel, 7, 7]` maps."""
        b, p = patches.shape[:2]
        x = patches.reshape(b * p, *patches.shape[2:])
        if self.feature_extractor.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # follow a channels-last model
        stages = self.feature_extractor(x)
        codes = []
        for i, stage in enumerate(stages, start=1):
            code = getattr(self, f"lda{i}_process")(stage)
            codes.append(code.reshape(b, p * self.lda_channel, 7, 7))
        return codes

    def forward_from_codes(
        self, lq_codes: list[Tensor], ref_codes: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """The network after the backbone. `ref_codes` may have batch 1 and is then shared by all LQ images."""
        lq = torch.cat(lq_codes, dim=1)
        diff = torch.cat([r - q for r, q in zip(ref_codes, lq_codes)], dim=1)
        lq_inner, lq_code = self.MLP_encoder_lq(lq)
        diff_inner, diff_code = self.MLP_encoder_diff(diff)
        pred = self.regressor(torch.cat([lq_code, diff_code], dim=1))
        return diff_inner, lq_inner, pred

    def forward(self, LQ_patches: Tensor, refHQ_patches: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:  # noqa: N803
        self._check_patches(LQ_patches, "LQ_patches")
        self._check_patches(refHQ_patches, "refHQ_patches")
        return self.forward_from_codes(self.encode_patches(LQ_patches), self.encode_patches(refHQ_patches))

    # ---- checkpoints -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path_or_state_dict: str | os.PathLike | Mapping[str, Tensor],
                        name: str | None = None, **kwargs) -> DistillationIQANet:
        """Build the network (sizes from `kwargs`) and load a checkpoint, skipping the random initialisation."""
        if kwargs.setdefault("pretrained", False) is not False:
            raise ValueError("from_checkpoint takes every weight from the checkpoint: pretrained must be False")
        with torch.device("meta"):
            net = cls(**kwargs)
        net.load_checkpoint(path_or_state_dict, assign=True, name=name)
        return net

    def load_checkpoint(self, path_or_state_dict: str | os.PathLike | Mapping[str, Tensor],
                        assign: bool = False, name: str | None = None) -> dict:
        """Load the authors' released files, DataParallel/DDP files, or this project's checkpoints.

        Returns the whole checkpoint dict (for this project's files: epoch, options, metrics ...).
        `assign=True` takes the checkpoint's tensors as they are (for a network built on the meta device).
        `name` says in messages where an already loaded checkpoint came from (e.g. its file).
        Raises `UserError` naming the problem: missing file, not a checkpoint, wrong keys, other self_patch_num,
        non-numeric tensors, non-finite weights. Half or double precision tensors are converted to float32.
        """
        where = name or "the given state dict"
        if isinstance(path_or_state_dict, Mapping):
            checkpoint = dict(path_or_state_dict)
        else:
            path = Path(path_or_state_dict)
            where = str(path)
            if not path.is_file():
                raise UserError(f"checkpoint not found: {path}")
            checkpoint = safe_torch_load(path)
        state = extract_state_dict(checkpoint, where)
        self._check_patch_num(state, where)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise UserError(
                f"{where} does not match DistillationIQANet(MLP_depth, channels as built): "
                f"missing keys {_short_list(missing)}; unexpected keys {_short_list(unexpected)}"
            )
        wrong = [f"{k} {tuple(state[k].shape)} (network {tuple(own[k].shape)})"
                 for k in own if state[k].shape != own[k].shape]
        if wrong:
            raise UserError(f"{where} has tensors of other shapes: {_short_list(wrong)}")
        self.load_state_dict(_checked_dtypes(state, own, where), strict=True, assign=assign)
        return checkpoint

    def _check_patch_num(self, state: Mapping[str, Tensor], where: str) -> None:
        needed = checkpoint_patch_num(state)
        if needed is not None and needed != self.self_patch_num:
            raise UserError(
                f"{where} was made with self_patch_num={needed}, but the network was built with "
                f"self_patch_num={self.self_patch_num}: pass --self_patch_num {needed}"
            )


def checkpoint_patch_num(state: Mapping[str, Tensor]) -> int | None:
    """The self_patch_num a state dict was made with (from its embedding width), or None if it cannot tell."""
    embed = state.get("MLP_encoder_lq.mlp.1.weight")
    lda = state.get("lda1_process.0.weight")
    if embed is None or lda is None or embed.dim() != 2:
        return None  # reported as missing keys
    per_patch = len(STAGE_CHANNELS) * lda.shape[0]
    if embed.shape[1] % per_patch:
        return None
    return embed.shape[1] // per_patch


def extract_state_dict(checkpoint: object, where: str = "checkpoint", *,
                       keep_unused: bool = False) -> dict[str, Tensor]:
    """The network's state dict from any accepted checkpoint layout, without `module.` prefixes and (unless
    `keep_unused`) without the released files' unused keys."""
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{where} is not a checkpoint: expected a dict of tensors, got {type(checkpoint).__name__}")
    state = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    if not state or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UserError(f"{where} is not a DistillationIQANet checkpoint: expected a dict of tensors")
    cleaned = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if keep_unused or key not in UNUSED_CHECKPOINT_KEYS:
            cleaned[key] = value
    return cleaned


def _checked_dtypes(state: Mapping[str, Tensor], own: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    """`state` with each floating tensor in the network's dtype (a half-precision file loads as float32).

    Raises `UserError` for an integer or boolean tensor where the network holds floats, and for NaN or
    infinite weights (a diverged training run).
    """
    out, not_float, not_finite = {}, [], []
    for key, value in state.items():
        target = own[key].dtype
        if target.is_floating_point:
            if not value.is_floating_point():
                not_float.append(f"{key} ({str(value.dtype).replace('torch.', '')})")
                continue
            value = value.to(target)
            if not bool(torch.isfinite(value).all()):
                not_finite.append(key)
        out[key] = value
    if not_float:
        raise UserError(f"{where} holds non-floating-point weights where the network needs float32: "
                        f"{_short_list(not_float)}")
    if not_finite:
        raise UserError(f"{where} holds NaN or infinite weights (a diverged training run?): {_short_list(not_finite)}")
    return out


def _short_list(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"

