"""One target's Open-Unmix network, rewritten for one stream: few operations per frame, state carried.

`OpenUnmix.forward` on one frame is six matrix-vector products and some forty small operations
around them. With one-hop blocks the products read all the weights for every frame (42 MB in
float32 for hidden 512, more than this machine's cache keeps), and each small operation costs
microseconds of dispatch, so `StreamingNet` computes the same function with as few operations as it
can:
- Every fixed affine step is folded into the Linear next to it: the input shift and scale and bn1
  into fc1, bn2 into fc2, bn3 and the output scale and shift into fc3 (BatchNorm with its running
  statistics, as in eval mode). Folding is done in float64.
- The LSTM (`CarriedLSTM`) runs frame by frame with its (h, c) kept between calls, in buffers laid
  out so that a frame allocates and concatenates nothing.
- It returns the non-negative gain that OpenUnmix multiplies the mixture magnitude with; the caller
  applies it (to the magnitude or, equivalently, to the complex spectrum).

Weights are kept in float32 (the module's own function up to float32 rounding) or, on the CPU, in
float16 (`Dense`): half the bytes to read per frame, with float32 activations and sums.
"""

from __future__ import annotations

from typing import Protocol

import torch
from openunmix.model import OpenUnmix
from torch import Tensor, nn

from umx_tune.config import STREAM_PRECISIONS
from umx_tune.errors import ConfigError, ModelError


def check_precision(precision: str, device: torch.device) -> str:
    """ConfigError unless `precision` is one of STREAM_PRECISIONS and runs on `device`; returns it."""
    if precision not in STREAM_PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(STREAM_PRECISIONS)}")
    if precision == "float16":
        if device.type != "cpu":
            raise ConfigError(
                f"precision=float16 is for the CPU (fbgemm's float16 GEMM); on {device.type} use float32"
            )
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise ConfigError(
                "precision=float16 needs PyTorch's fbgemm backend (x86 CPUs), which this build lacks"
            )
    return precision


class Dense(Protocol):
    """frames (nb_frames, in) -> frames @ weight.T + bias, (nb_frames, out), in float32; `out`, if
    given, receives the result."""

    def __call__(self, frames: Tensor, out: Tensor | None = None) -> Tensor: ...


class _Float32Dense:
    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        self._weight_t, self._bias = weight.t(), bias  # F.linear's layout for the GEMM

    def __call__(self, frames: Tensor, out: Tensor | None = None) -> Tensor:
        return torch.addmm(self._bias, frames, self._weight_t, out=out)


class _Float16Dense:
    """fbgemm's float16 GEMM: reads the half-size packed weight, computes in float32."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        self._packed = torch.ops.quantized.linear_prepack_fp16(weight.contiguous(), bias)

    def __call__(self, frames: Tensor, out: Tensor | None = None) -> Tensor:
        result = torch.ops.quantized.linear_dynamic_fp16(frames, self._packed)
        return result if out is None else out.copy_(result)


def dense(weight: Tensor, bias: Tensor, precision: str, device: torch.device) -> Dense:
    """A Dense for weight (out, in) and bias (out,), its weight kept in `precision` on `device`."""
    weight, bias = weight.detach().float().to(device), bias.detach().float().to(device)
    return _Float16Dense(weight, bias) if precision == "float16" else _Float32Dense(weight, bias)


class CarriedLSTM:
    """A unidirectional nn.LSTM's computation for one stream, with (h, c) carried between calls.

    All layers' inputs live in one buffer [x | h_0 | ... | h_{L-1}], so layer k reads [h_{k-1} | h_k]
    as one slice, and one frame takes one product per layer with [W_ih | W_hh]. A call with several
    frames projects all of them through W_ih in one product per layer, then runs W_hh frame by frame,
    as nn.LSTM does. Gate rows are reordered to input, forget, output, cell, so the three sigmoid
    gates are one slice.
    """

    def __init__(self, lstm: nn.LSTM, precision: str, device: torch.device) -> None:
        if lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ModelError("streaming needs a unidirectional LSTM with biases and no projection")
        size = self.hidden_size = lstm.hidden_size
        self.input_size = lstm.input_size
        # PyTorch's gate order is input, forget, cell, output; sigmoid gates first
        gates = torch.arange(4 * size).reshape(4, size)
        order = gates[[0, 1, 3, 2]].flatten()
        self.fused: list[Dense] = []  # [W_ih | W_hh], one frame
        self.projections: list[Dense] = []  # W_ih, several frames at once
        self.recurrences: list[Dense] = []  # W_hh, frame by frame
        for k in range(lstm.num_layers):
            weight_ih, weight_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
            weight = torch.cat([weight_ih, weight_hh], 1)[order].float().to(device)
            bias = (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}"))[order]
            nb_inputs = weight_ih.shape[1]
            # in float32 the three share the fused weight's memory
            self.fused.append(dense(weight, bias, precision, device))
            self.projections.append(dense(weight[:, :nb_inputs], bias, precision, device))
            self.recurrences.append(dense(weight[:, nb_inputs:], torch.zeros_like(bias), precision, device))
        self._inputs = torch.zeros(self.input_size + lstm.num_layers * size, device=device)
        # h_k starts at ends[k]; layer k's input [h_{k-1} | h_k] (x for k = 0) ends where h_k does
        ends = [self.input_size + k * size for k in range(lstm.num_layers)]
        starts = [0, *ends[:-1]]
        self._layer_inputs = [
            self._inputs[None, start : end + size] for start, end in zip(starts, ends, strict=True)
        ]
        self._hidden = [self._inputs[end : end + size] for end in ends]
        self._cell_states = torch.zeros(lstm.num_layers, size, device=device)
        self._cells = list(self._cell_states)
        self._gates = torch.zeros(1, 4 * size, device=device)
        self._sigmoid_gates = self._gates[0, : 3 * size]
        self._in, self._forget, self._out, self._cell_gate = self._gates[0].chunk(4)
        self._scratch = torch.zeros(size, device=device)

    def reset(self) -> None:
        """Start a new stream: zero state."""
        self._inputs.zero_()
        self._cell_states.zero_()

    def __call__(self, frames: Tensor) -> Tensor:
        """(nb_frames, input_size) -> (nb_frames, hidden_size), the last layer's h for each frame.

        With one frame the result is a view of the state, valid until the next call.
        """
        if len(frames) == 1:
            self._inputs[: self.input_size].copy_(frames[0])
            for k, fused in enumerate(self.fused):
                fused(self._layer_inputs[k], out=self._gates)
                self._advance(k)
            return self._hidden[-1][None]
        for k, (projection, recurrence) in enumerate(zip(self.projections, self.recurrences, strict=True)):
            projected = projection(frames)
            frames = frames.new_empty(len(frames), self.hidden_size)
            for frame_gates, output in zip(projected, frames, strict=True):
                recurrence(self._hidden[k][None], out=self._gates).add_(frame_gates)
                output.copy_(self._advance(k))
        return frames

    def _advance(self, layer: int) -> Tensor:
        """Advance layer's (h, c) by the gates in self._gates; returns the new h (a view of the state)."""
        cell = self._cells[layer]
        self._sigmoid_gates.sigmoid_()
        self._cell_gate.tanh_()
        cell.mul_(self._forget).addcmul_(self._in, self._cell_gate)
        return torch.mul(self._out, torch.tanh(cell, out=self._scratch), out=self._hidden[layer])


def _batch_norm_affine(norm: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """(scale, shift) with norm(z) = scale * z + shift, from its running statistics (eval mode)."""
    if norm.running_mean is None or norm.running_var is None:
        raise ModelError("streaming needs BatchNorm layers with running statistics")
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return scale, norm.bias.double() - norm.running_mean.double() * scale


def _folded(
    linear: nn.Linear,
    out_scale: Tensor,
    out_shift: Tensor,
    in_scale: Tensor | None = None,
    in_shift: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Weight and bias of x -> out_scale * linear(in_scale * (x + in_shift)) + out_shift, in float64."""
    weight = linear.weight.double()
    bias = torch.zeros_like(out_shift) if linear.bias is None else linear.bias.double()
    if in_scale is not None and in_shift is not None:
        bias = bias + weight @ (in_scale.double() * in_shift.double())
        weight = weight * in_scale.double()
    return out_scale[:, None] * weight, out_scale * bias + out_shift


class StreamingNet:
    """One OpenUnmix's computation for one stream, frame by frame (see the module docstring)."""

    def __init__(self, unmix: OpenUnmix, precision: str, device: torch.device) -> None:
        self.nb_bins = unmix.nb_bins
        self.nb_output_bins = unmix.nb_output_bins
        self.nb_channels = unmix.fc1.in_features // unmix.nb_bins
        channels = self.nb_channels
        with torch.no_grad():
            fc1 = _folded(
                unmix.fc1,
                *_batch_norm_affine(unmix.bn1),
                in_scale=unmix.input_scale.repeat(channels),
                in_shift=unmix.input_mean.repeat(channels),
            )
            fc2 = _folded(unmix.fc2, *_batch_norm_affine(unmix.bn2))
            norm_scale, norm_shift = _batch_norm_affine(unmix.bn3)
            output_scale = unmix.output_scale.double().repeat(channels)
            output_shift = unmix.output_mean.double().repeat(channels)
            fc3 = _folded(unmix.fc3, norm_scale * output_scale, norm_shift * output_scale + output_shift)
            self.fc1, self.fc2, self.fc3 = (dense(*folded, precision, device) for folded in (fc1, fc2, fc3))
            self.lstm = CarriedLSTM(unmix.lstm, precision, device)

    def reset(self) -> None:
        """Start a new stream."""
        self.lstm.reset()

    def gains(self, magnitude: Tensor) -> Tensor:
        """(nb_channels, nb_frames, nb_bins) mixture magnitude -> (nb_channels, nb_frames, nb_output_bins)
        the non-negative gains OpenUnmix.forward multiplies that magnitude with, frame by frame."""
        nb_frames = magnitude.shape[1]
        # (nb_frames, nb_channels * nb_bins), channel-major as OpenUnmix flattens it
        encoded = self.fc1(magnitude[..., : self.nb_bins].transpose(0, 1).reshape(nb_frames, -1)).tanh_()
        hidden = self.fc2(torch.cat([encoded, self.lstm(encoded)], -1)).relu_()
        gains = self.fc3(hidden).relu_()
        return gains.reshape(nb_frames, self.nb_channels, self.nb_output_bins).transpose(0, 1)
