"""Whole training steps replayed: each step (D and G updates, both directions, the optimizers) captured once per
input shape as a CUDA graph, then replayed with the next batch copied into the graph's inputs.

A small-image step is hundreds of tiny kernels: on a GPU its time is their launches and Python, not their FLOPs.
A replay launches them all at once. The maths is the step's own: the captured kernels are those the eager step
runs, on the same parameters and optimizer state (Adam with `capturable=True`, its step counts on the device).

Shapes are static within a run, except a last partial batch: each shape gets its own graph. The first
`EAGER_STEPS` steps of a shape run eagerly (real training steps, on a side stream, as CUDA graph capture asks:
cuDNN and the allocator settle first); the next is captured and replayed, and replayed from then on. The
outputs of a replay are the graph's own tensors, overwritten by the next replay: read them before that.

A replay must not compute other numbers than the step it stands for, and must not cost the run: the first replay
of each shape is checked against an eager step from the same weights, optimizer state and random state on the same
batch. If the capture or that replay raises, or its losses or its change to any weight, buffer or optimizer moment
differ beyond the tolerances below, the run goes on from the eager step's result (so exactly one step is taken),
that shape runs eagerly for the rest of the run, one warning line says why, and the run records
`replay = fallback`. A later replay that raises is not caught: the graph ran before and the state it left is unknown.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

EAGER_STEPS = 3  # eager steps of a shape before its capture (PyTorch's CUDA graph examples take 3)
FALLBACK = "fallback"  # what `replay` resolved to where a shape fell back to eager
# The check's tolerances. Replayed and eager run the same kernels, so they differ by the order of atomic additions in
# cuDNN's backward (about 1e-6 relative in fp32): a loss may move by far less than LOSS_RTOL, and each group of
# state tensors (one network's weights, one Adam moment) by far less than UPDATE_RTOL of what the step changed in it.
# A graph that reads a stale batch or stale weights, or drops an update, is off by tens of percent of either.
LOSS_RTOL, LOSS_ATOL = 1e-3, 1e-6
UPDATE_RTOL = 1e-2
Step = Callable[..., dict[str, torch.Tensor]]
State = Callable[[], tuple[dict, dict]]  # the networks and optimizers a step updates, as they are now

log = logging.getLogger(__name__)


class Eager:
    """No replay: each step runs as written (the CPU's path, and replay=off)."""

    def __call__(self, kind: str, step: Step, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return step(*inputs)


class CompiledGraphs:
    """compile=true on CUDA: torch.compile's reduce-overhead mode replays CUDA graphs of the compiled networks, which
    may reuse the previous step's outputs once told that a new step begins."""

    def __call__(self, kind: str, step: Step, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        torch.compiler.cudagraph_mark_step_begin()
        return step(*inputs)


class CudaGraphs:
    """The capture backend: torch.cuda.CUDAGraph, each graph with its own memory pool (graphs of two shapes
    are replayed in any order, which a shared pool does not allow)."""

    def __init__(self, device: torch.device):
        self.device = device

    def eager(self, fn: Callable[[], dict]) -> dict:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), warnings.catch_warnings():
            # Adam warns that a capturable instance runs uncaptured: here it does so on purpose, for EAGER_STEPS
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


def state_groups(nets: dict, optims: dict) -> dict[str, list[torch.Tensor]]:
    """Every tensor a step updates, in groups compared on their own scale: each network's weights and buffers (a
    module's, or a fused StackedNet's stacked tensors), each optimizer's moments and step counts."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, net in nets.items():
        weights = (net.parameters(), net.buffers()) if isinstance(net, nn.Module) else \
            (net.params.values(), net.buffers.values())
        groups[f"{name} weights"], groups[f"{name} buffers"] = (list(w) for w in weights)
    for name, opt in optims.items():
        for per_param in opt.state.values():
            for key, value in per_param.items():
                if torch.is_tensor(value):
                    groups.setdefault(f"{name} optimizer {key}", []).append(value)
    return {k: v for k, v in groups.items() if v}


class Snapshot:
    """The state tensors' values and the random state at one moment, kept on the host (device memory is the
    stack's), to go back to it exactly."""

    def __init__(self, groups: dict[str, list[torch.Tensor]]):
        self.values = {k: [t.detach().to("cpu", copy=True) for t in ts] for k, ts in groups.items()}
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self, groups: dict[str, list[torch.Tensor]]) -> None:
        with torch.no_grad():
            for k, ts in groups.items():
                for t, saved in zip(ts, self.values[k], strict=True):
                    t.copy_(saved)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def difference(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], before: Snapshot, after: Snapshot,
               groups: dict[str, list[torch.Tensor]]) -> str | None:
    """Why a replayed step's losses `out` and state `groups` are not the eager step's (`expected`, `after`, both from
    `before`), or None."""
    if out.keys() != expected.keys():
        return f"its losses are {sorted(out)}, the eager step's {sorted(expected)}"
    for k, e in expected.items():
        r, e = out[k].detach().double(), e.detach().double()
        if not torch.allclose(r, e, rtol=LOSS_RTOL, atol=LOSS_ATOL, equal_nan=True):
            rel = ((r - e).abs() / e.abs().clamp_min(LOSS_ATOL)).max().item()
            return f"loss {k} is {rel:.3g} (relative) off the eager step's (tolerance {LOSS_RTOL:g})"
    for k, ts in groups.items():
        off = changed = 0.0
        for t, old, new in zip(ts, before.values[k], after.values[k], strict=True):  # on the device, one at a time
            t, new = t.detach().double(), new.to(t.device).double()
            off += (t - new).square().sum().item()
            changed += (new - old.to(t.device).double()).square().sum().item()
        if not off ** 0.5 <= UPDATE_RTOL * changed ** 0.5:
            return f"{k} moved {off ** 0.5:.3g} away from the eager step's change of {changed ** 0.5:.3g} (L2)"
    return None


class Replay:
    """Steps keyed by (kind, input shapes): EAGER_STEPS eager steps, then one capture checked by its first replay,
    then replays; a shape whose check failed runs eagerly from then on, and `record["replay"]` (the run's resolved
    switches) says `fallback`. `state` gives what a step updates."""

    def __init__(self, backend, state: State, record: dict | None = None):
        self.backend, self.state, self.record = backend, state, record if record is not None else {}
        self.graphs: dict[tuple, tuple[object, list[torch.Tensor], dict[str, torch.Tensor]]] = {}
        self.warm: Counter = Counter()
        self.fallen: dict[tuple, str] = {}  # shape -> why it runs eagerly
        self.optims = None  # the optimizers the graphs were captured with

    def __call__(self, kind: str, step: Step, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        optims = self.state()[1]
        if optims is not self.optims:
            # a fused seed left: the group's networks and optimizers were replaced, and the graphs captured the old
            # ones. Shapes that fell back stay eager
            self.graphs.clear()
            self.warm.clear()
            self.optims = optims
        key = (kind, *(tuple(t.shape) for t in inputs))
        if key in self.fallen:
            return self.backend.eager(lambda: step(*inputs))
        if key not in self.graphs:
            if self.warm[key] < EAGER_STEPS:
                self.warm[key] += 1
                return self.backend.eager(lambda: step(*inputs))
            return self.first(key, step, inputs)
        graph, static, out = self.graphs[key]
        for buffer, t in zip(static, inputs, strict=True):
            buffer.copy_(t)
        self.backend.replay(graph)
        return out

    def first(self, key: tuple, step: Step, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """This shape's capture and first replay, checked against an eager step on the same batch from the same state;
        the run goes on from the replay if they agree, else from the eager step (one step either way)."""
        groups = state_groups(*self.state())
        before = Snapshot(groups)
        expected = self.backend.eager(lambda: step(*inputs))
        after = Snapshot(groups)
        before.restore(groups)
        try:
            static = [t.clone() for t in inputs]  # allocated before the capture: the graph reads them in place
            graph, out = self.backend.capture(lambda: step(*static))
            self.backend.replay(graph)
            # reads the replay's results on the host: a kernel error of the replay is raised here, inside the try
            why = difference(out, expected, before, after, groups)
        except Exception as error:  # noqa: BLE001 - any failure of capture or first replay falls back, said below
            text = (str(error).strip() or "-").splitlines()[0]
            why = f"its capture or first replay raised {type(error).__name__}: {text}"
        if why is None:
            self.graphs[key] = (graph, static, out)
            return out
        after.restore(groups)
        self.fallen[key] = why
        self.record["replay"] = FALLBACK
        log.warning("replay: the %s step on inputs of shape %s runs eagerly for the rest of the run "
                    "(resolved.replay=%s): %s", key[0], " and ".join(str(s) for s in key[1:]), FALLBACK, why)
        return expected



def executor(execution: dict, device: torch.device, state: State, compiled: bool = False) -> Eager | Replay:
    """How a run's steps execute, from its resolved switches (`execution`, where a fallback is written down) and
    whether its networks are compiled."""
    if execution["replay"]:
        return Replay(CudaGraphs(device), state, execution)
    return CompiledGraphs() if compiled and device.type == "cuda" else Eager()
