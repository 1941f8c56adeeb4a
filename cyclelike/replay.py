"""Whole training steps replayed: each step (D and G updates, both directions, the optimizers) captured once per
input shape as a CUDA graph, then replayed with the next batch copied into the graph's inputs.

A small-image step is hundreds of tiny kernels: on a GPU its time is their launches and Python, not their FLOPs.
A replay launches them all at once. The maths is the step's own: the captured kernels are those the eager step
runs, on the same parameters and optimizer state (Adam with `capturable=True`, its step counts on the device).

Shapes are static within a run, except a last partial batch: each shape gets its own graph. The first
`WARMUP` steps of a shape run eagerly (real training steps, on a side stream, as CUDA graph capture asks:
cuDNN and the allocator settle first); the next is captured and replayed, and replayed from then on. The
outputs of a replay are the graph's own tensors, overwritten by the next replay: read them before that.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable

import torch

WARMUP = 3  # eager steps of a shape before its capture (PyTorch's CUDA graph examples take 3)
Step = Callable[..., dict[str, torch.Tensor]]


class Eager:
    """No replay: each step runs as written (the CPU's path, and replay=off)."""

    def __call__(self, kind: str, step: Step, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return step(*inputs)

    def reset(self) -> None:
        pass


class CudaGraphs:
    """The capture backend: torch.cuda.CUDAGraph, each graph with its own memory pool (graphs of two shapes
    are replayed in any order, which a shared pool does not allow)."""

    def __init__(self, device: torch.device):
        self.device = device

    def eager(self, fn: Callable[[], dict]) -> dict:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), warnings.catch_warnings():
            # Adam warns that a capturable instance runs uncaptured: here it does so on purpose, for WARMUP steps
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            out = fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def capture(self, fn: Callable[[], dict]) -> tuple[torch.cuda.CUDAGraph, dict]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    def replay(self, graph: torch.cuda.CUDAGraph) -> None:
        graph.replay()


class Replay:
    """Steps keyed by (kind, input shapes): WARMUP eager steps, then one capture, then replays."""

    def __init__(self, backend):
        self.backend = backend
        self.graphs: dict[tuple, tuple[object, list[torch.Tensor], dict[str, torch.Tensor]]] = {}
        self.warm: Counter = Counter()

    def __call__(self, kind: str, step: Step, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (kind, *(tuple(t.shape) for t in inputs))
        if key not in self.graphs:
            if self.warm[key] < WARMUP:
                self.warm[key] += 1
                return self.backend.eager(lambda: step(*inputs))
            static = [t.clone() for t in inputs]  # allocated before the capture: the graph reads them in place
            graph, out = self.backend.capture(lambda: step(*static))
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for buffer, t in zip(static, inputs, strict=True):
            buffer.copy_(t)
        self.backend.replay(graph)
        return out

    def reset(self) -> None:
        """Forget every graph: the networks or optimizers they captured were replaced (a fused seed left)."""
        self.graphs.clear()
        self.warm.clear()


def stepper(replay: bool, device: torch.device) -> Eager | Replay:
    return Replay(CudaGraphs(device)) if replay else Eager()
