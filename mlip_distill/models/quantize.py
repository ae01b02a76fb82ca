"""Int8 quantisation of a student's weights: fake quantisation for quantisation-aware training
(QAT), and the int8 weights and scales a quantised potential stores.

Scheme: symmetric, per output channel, integers in [-127, 127]. For the weights ``w_c`` of one
output channel, ``scale_c = max|w_c| / 127`` and ``q = round(w / scale_c)``; the network then
computes with ``q * scale_c``. The scales follow the weights at every step (no running
statistics), so an int8 export of QAT-trained weights computes exactly what the fake-quantised
model computed.

Quantised weights: every ``nn.Linear`` (a channel is a row), every layer of an e3nn
``FullyConnectedNet`` (weights (in, out): a channel is a column), and the flat weights of e3nn
``o3.Linear`` and of tensor products with internal weights, where each instruction's block
``(..., mul_out)`` has its own ``mul_out`` channels. Embeddings, E0s, the energy scale and the
radial basis stay float: they are few numbers and set the energy's absolute level. Activations
are not quantised.

Forces are −∂E/∂x, and no CPU int8 kernel has a backward pass, so an int8 student computes in
float32 with its weights dequantised when loaded: int8 shrinks the weights file, not the time
per step (``benchmarks/quantization.py`` measures it).

QAT: :func:`prepare_qat` puts a fake-quantisation parametrisation on each weight (gradients
pass straight through, ``torch.fake_quantize_per_channel_affine``); :func:`remove_qat` takes it
off again, leaving the latent float weights, which :func:`int8_state_dict` turns into int8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from e3nn import o3
from e3nn.nn._fc import _Layer as FullyConnectedLayer
from torch import Tensor, nn
from torch.nn.utils import parametrize

QUANT_MIN, QUANT_MAX = -127, 127
SCHEME = "int8-symmetric-per-channel"
SCALE_SUFFIX = ":scale"
_SMALLEST_SCALE = 1e-12  # an all-zero channel: any positive scale quantises it to zeros


@dataclass(frozen=True)
class ChannelLayout:
    """How a weight splits into output channels.

    ``blocks``: the (n_in, n_out) matrices, in order, that a flat e3nn weight concatenates;
    ``channel_axis``: for a 2-D weight, the axis that indexes output channels.
    """

    blocks: tuple[tuple[int, int], ...] = ()
    channel_axis: int | None = None

    def matrices(self, weight: Tensor) -> list[Tensor]:
        """Views (n_in, channels) of ``weight``, channels along dimension 1."""
        if self.channel_axis is not None:
            return [weight if self.channel_axis == 1 else weight.t()]
        sizes = [n_in * n_out for n_in, n_out in self.blocks]
        return [part.reshape(shape) for part, shape in zip(torch.split(weight, sizes), self.blocks)]

    def join(self, matrices: list[Tensor], like: Tensor) -> Tensor:
        """The inverse of :meth:`matrices`: a tensor shaped like ``like``."""
        if self.channel_axis is not None:
            return matrices[0] if self.channel_axis == 1 else matrices[0].t()
        return torch.cat([matrix.reshape(-1) for matrix in matrices]).reshape(like.shape)


def _layout(module: nn.Module) -> ChannelLayout | None:
    if isinstance(module, nn.Linear):
        return ChannelLayout(channel_axis=0)
    if isinstance(module, FullyConnectedLayer):
        return ChannelLayout(channel_axis=1)
    if isinstance(module, (o3.Linear, o3.TensorProduct)) and module.internal_weights and module.weight_numel:
        blocks = []
        for instruction in module.instructions:
            if getattr(instruction, "has_weight", True) and instruction.path_shape:
                *inputs, n_out = instruction.path_shape
                blocks.append((math.prod(inputs), n_out))
        return ChannelLayout(blocks=tuple(blocks))
    return None


def quantizable_modules(model: nn.Module) -> dict[str, tuple[nn.Module, ChannelLayout]]:
    """``{module name: (module, layout)}`` of every module whose ``weight`` is quantised."""
    found = {}
    for name, module in model.named_modules():
        layout = _layout(module)
        if layout is not None:
            found[name] = (module, layout)
    return found


def channel_scales(weight: Tensor, layout: ChannelLayout) -> list[Tensor]:
    """Per-channel scales (float32), one tensor per matrix of ``layout``."""
    return [
        (matrix.detach().abs().amax(dim=0).float() / QUANT_MAX).clamp_min(_SMALLEST_SCALE)
        for matrix in layout.matrices(weight)
    ]


def fake_quantize(weight: Tensor, layout: ChannelLayout) -> Tensor:
    """``weight`` rounded to the int8 grid of its channels, same dtype and shape; the gradient
    passes straight through."""
    quantized = []
    for matrix, scale in zip(layout.matrices(weight), channel_scales(weight, layout)):
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
        quantized.append(
            torch.fake_quantize_per_channel_affine(matrix, scale, zero_point, 1, QUANT_MIN, QUANT_MAX)
        )
    return layout.join(quantized, weight)


class WeightFakeQuantization(nn.Module):
    """Parametrisation that fake-quantises the weight it is registered on."""

    def __init__(self, layout: ChannelLayout) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, weight: Tensor) -> Tensor:
        return fake_quantize(weight, self.layout)


def prepare_qat(model: nn.Module) -> nn.Module:
    """Fake-quantise every quantisable weight of ``model`` from now on (in place; returned).

    The parameters keep their values; their state-dict keys become
    ``<module>.parametrizations.weight.original`` until :func:`remove_qat`.
    """
    if is_prepared(model):
        raise ValueError("model is already prepared for quantisation-aware training")
    for module, layout in quantizable_modules(model).values():
        parametrize.register_parametrization(module, "weight", WeightFakeQuantization(layout))
    return model


def is_prepared(model: nn.Module) -> bool:
    """Whether :func:`prepare_qat` has been applied to ``model``."""
    return any(parametrize.is_parametrized(module, "weight") for module in model.modules())


def remove_qat(model: nn.Module) -> nn.Module:
    """Take the fake quantisation off (in place; returned), keeping the latent float weights."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return model


def int8_state_dict(model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """The state dict of a (not prepared) student with its quantisable weights as int8.

    Returns:
        ``state``: like ``model.state_dict()``, but each quantised weight is an int8 tensor of
        the same shape, with its per-channel scales (float32, concatenated over the blocks)
        under ``<weight key>:scale``; and the names of the quantised weights.
    """
    if is_prepared(model):
        raise ValueError("remove_qat(model) first: the state dict of a prepared model has parametrisation keys")
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    names = []
    for module_name, (module, layout) in quantizable_modules(model).items():
        key = f"{module_name}.weight" if module_name else "weight"
        weight = module.weight.detach().cpu()
        scales = channel_scales(weight, layout)
        integers = [
            torch.round(matrix.float() / scale).clamp(QUANT_MIN, QUANT_MAX).to(torch.int8)
            for matrix, scale in zip(layout.matrices(weight), scales)
        ]
        state[key] = layout.join(integers, weight).contiguous()
        state[key + SCALE_SUFFIX] = torch.cat(scales).contiguous()
        names.append(key)
    return state, names


def dequantize_state_dict(state: dict[str, Tensor], model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Float weights for ``model`` from an :func:`int8_state_dict` whose quantised weights are
    ``names``; ``ValueError`` naming a weight that is missing or does not fit ``model``."""
    modules = quantizable_modules(model)
    state = dict(state)
    for key in names:
        module_name = key.removesuffix(".weight")
        if module_name not in modules or key not in state or key + SCALE_SUFFIX not in state:
            raise ValueError(f"quantised weight {key} is missing or not quantisable in this architecture")
        module, layout = modules[module_name]
        integers, scales = state.pop(key), state.pop(key + SCALE_SUFFIX)
        if integers.dtype != torch.int8 or integers.shape != module.weight.shape:
            raise ValueError(f"quantised weight {key}: {integers.dtype} {tuple(integers.shape)} does not fit "
                             f"{tuple(module.weight.shape)} int8")
        matrices = layout.matrices(integers)
        if scales.numel() != sum(matrix.shape[1] for matrix in matrices):
            raise ValueError(f"quantised weight {key}: {scales.numel()} scales for its channels")
        parts = torch.split(scales, [matrix.shape[1] for matrix in matrices])
        dequantized = [matrix.float() * scale for matrix, scale in zip(matrices, parts)]
        state[key] = layout.join(dequantized, integers).to(module.weight.dtype)
    return state
