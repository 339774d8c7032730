"""ONNX graph -> an ordinary ``torch.nn.Module``.

Nodes run in the graph's (topological) order; every node whose inputs are all known at conversion time is folded
into a constant (ConstantOfShape-built weights, shape arithmetic). The module keeps, per node, its ONNX name and
operator and the constant inputs (weights), which is the typed view the Lipschitz bounds read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from certify import ops  # noqa: F401  (registers every operator)
from certify.errors import ModelRejected
from certify.load import DEFAULT_LIMITS, Limits, opset_of
from certify.ops import registry
from certify.ops.base import ALLOCATION_LIMIT, TORCH_OF_ONNX, NodeView, OnnxOp, dense_of_sparse, tensor_of_array

CONVERTER_VERSION = "1"


@dataclass
class Step:
    """One runtime node: the module and the names it reads and writes."""

    module: OnnxOp
    inputs: list[str]
    outputs: list[str]


def _inferred_shapes(model: onnx.ModelProto) -> dict:
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return shapes


def _rank(name: str, constants: dict, shapes: dict) -> int | None:
    if name in constants:
        return constants[name].dim()
    shape = shapes.get(name)
    return None if shape is None else len(shape)


class OnnxGraph(nn.Module):
    """A converted ONNX graph. ``forward`` takes the graph inputs positionally, returns its output(s)."""

    def __init__(self, model: onnx.ModelProto, limits: Limits = DEFAULT_LIMITS):
        super().__init__()
        token = ALLOCATION_LIMIT.set(limits.max_tensor_bytes)
        try:
            self._build(model)
        finally:
            ALLOCATION_LIMIT.reset(token)

    def _build(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.opset = opset_of(model)
        constants: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            constants[init.name] = tensor_of_array(numpy_helper.to_array(init))
        for sp in graph.sparse_initializer:
            constants[sp.values.name] = tensor_of_array(dense_of_sparse(sp))
        self.input_names = [vi.name for vi in graph.input if vi.name not in constants]
        self.output_names = [vi.name for vi in graph.output]
        self.input_dtypes = {vi.name: vi.type.tensor_type.elem_type for vi in graph.input}
        self.shapes = _inferred_shapes(model)
        self.fixed_batch = _fixed_batch(graph, self.input_names, self.shapes)
        self._batches_freely: bool | None = None
        self.folded: list[str] = []
        steps: list[Step] = []
        np_constants: dict[str, np.ndarray] = {}
        for index, proto in enumerate(graph.node):
            cls = registry.lookup(proto.op_type, self.opset)
            if cls is None:
                raise ModelRejected("unsupported_operator", f"Unsupported operators: {proto.op_type} (1 node)")
            if not proto.name:
                proto.name = f"{proto.op_type}_{index}"
            for name in proto.input:
                if name and name in constants and name not in np_constants:
                    np_constants[name] = constants[name].numpy()
            view = NodeView.from_proto(proto, self.opset, np_constants, self.shapes)
            module = cls.from_node(view)
            present = [n for n in proto.input if n]
            if module.foldable and all(n in constants for n in present):
                with torch.no_grad():
                    out = module(*[constants[n] if n else None for n in proto.input])
                for name, value in zip(proto.output, out if isinstance(out, (tuple, list)) else (out,)):
                    if name:
                        constants[name] = value
                self.folded.append(proto.name)
                continue
            steps.append(Step(module, list(proto.input), list(proto.output)))
        self.nodes = nn.ModuleList(s.module for s in steps)
        self._wiring = [(s.inputs, s.outputs) for s in steps]
        used = {n for s in steps for n in s.inputs if n} | set(self.output_names)
        # 2-D convolutions run markedly faster on CPU (oneDNN) with channels-last activations and weights; the
        # memory format changes strides only, never values.
        self.channels_last = any(s.module.op_type in ("Conv", "ConvTranspose") and _rank(s.inputs[1], constants,
                                 self.shapes) == 4 for s in steps)
        self._const_attr: dict[str, str] = {}
        for i, name in enumerate(sorted(n for n in used if n in constants)):
            attr = f"const_{i}"
            value = constants[name]
            if self.channels_last and value.dim() == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
            self.register_buffer(attr, value, persistent=True)
            self._const_attr[name] = attr

    def constant(self, name: str) -> torch.Tensor | None:
        """The constant tensor behind ``name`` (a weight or a folded value), or None if computed at run time."""
        attr = self._const_attr.get(name)
        return None if attr is None else getattr(self, attr)

    def steps(self):
        """Runtime nodes in order: ``(module, input names, output names)``."""
        for module, (inputs, outputs) in zip(self.nodes, self._wiring):
            yield module, inputs, outputs

    def execute(self, *args, release: bool = False):
        """Run the graph one node at a time, yielding ``(module, input names, output names, env)`` after each.

        ``env`` maps every live tensor name to its value. With ``release``, a computed tensor leaves ``env`` once
        the last node reading it has run (graph outputs stay), so a caller that looks at one node at a time holds
        only the live activations, not the whole history.
        """
        env = self._start(args)
        yield from self._advance(env, release)

    def _start(self, args) -> dict[str, torch.Tensor]:
        if len(args) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(args)}")
        if self.channels_last:
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args]
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, args))
        for name, attr in self._const_attr.items():
            env.setdefault(name, getattr(self, attr))
        return env

    def _advance(self, env: dict, release: bool):
        last_use = self._last_use() if release else {}
        for index, (module, inputs, outputs) in enumerate(self.steps()):
            out = module(*[env[n] if n else None for n in inputs])
            if isinstance(out, (tuple, list)):
                for name, value in zip(outputs, out):
                    if name:
                        env[name] = value
            else:
                env[outputs[0]] = out
            yield module, inputs, outputs, env
            for name in set(inputs) | set(outputs):
                if last_use.get(name, len(self._wiring)) <= index and name not in self._const_attr:
                    env.pop(name, None)

    def _last_use(self) -> dict[str, int]:
        """Index of the last step reading each tensor (-1 for tensors no step reads); graph outputs never expire."""
        last = {n: -1 for _, outputs in self._wiring for n in outputs}
        for index, (inputs, _) in enumerate(self._wiring):
            last.update((n, index) for n in inputs if n)
        for name in self.output_names:
            last.pop(name, None)
        return last

    def run(self, *args, keep: bool = False):
        """Run the graph; with ``keep`` return the environment of every named tensor too."""
        env = self._start(args)
        for _ in self._advance(env, release=False):
            pass
        result = tuple(env[n] for n in self.output_names)
        return (result, env) if keep else result

    def forward(self, *args):
        result = self.run(*args) if self._fits_batch(args) else self._run_in_chunks(args)
        return result[0] if len(result) == 1 else result

    def _fits_batch(self, args) -> bool:
        """True unless the arguments are a batch of another size, of the declared rank, for a graph that reshapes
        by its fixed batch (arguments of another rank are run as they are, as before)."""
        if self.fixed_batch is None or not args or args[0].dim() != len(self.shapes[self.input_names[0]]):
            return True
        return args[0].shape[0] == self.fixed_batch or not self.reshapes_by_batch()

    def reshapes_by_batch(self) -> bool:
        """Whether the graph was exported for a fixed batch and computes wrongly (or fails) on another. Most
        exports pin the batch to 1 without reshaping by it: random samples, run batched and one chunk at a time,
        tell (once, when first needed). Such a graph runs in chunks of its fixed batch."""
        if self.fixed_batch is None:
            return False
        if self._batches_freely is None:
            self._batches_freely = self._probe_batching()
        return not self._batches_freely

    def _probe_batching(self) -> bool:
        specs = [(self.shapes.get(n), self.input_dtype(n)) for n in self.input_names]
        if any(s is None or any(not isinstance(d, int) for d in s) or not t.is_floating_point for s, t in specs):
            return False
        generator = torch.Generator().manual_seed(0)
        weight = next((b for b in self.buffers() if b.is_floating_point()), None)  # a float64 copy takes float64
        device = torch.device("cpu") if weight is None else weight.device
        args = [torch.rand(s[0] + 1, *s[1:], generator=generator, dtype=t if weight is None else weight.dtype)
                .to(device) for s, t in specs]
        try:
            with torch.no_grad():
                batched, chunked = self.run(*args), self._run_in_chunks(args)
        except (RuntimeError, ValueError, IndexError, ModelRejected):
            return False
        return all(b.shape == c.shape and torch.allclose(b, c, rtol=1e-4, atol=1e-6)
                   for b, c in zip(batched, chunked))

    def _run_in_chunks(self, args) -> tuple:
        """A graph exported for a fixed batch (reshapes to ``[1, -1]``) run on another batch: chunks of the fixed
        size (the last one padded with copies of its final sample), outputs concatenated and the padding dropped.
        Autograd flows through, so attacks and every caller of ``forward`` see an ordinary batched module."""
        n, size = args[0].shape[0], self.fixed_batch
        parts = []
        for first in range(0, n, size):
            parts.append(self.run(*[pad_batch(a[first:first + size], size) for a in args]))
        return tuple(torch.cat([p[i] for p in parts])[:n] for i in range(len(parts[0])))

    def input_dtype(self, name: str | None = None) -> torch.dtype:
        name = name or self.input_names[0]
        return TORCH_OF_ONNX.get(self.input_dtypes.get(name), torch.float32)


def pad_batch(a, size: int):
    """``a`` (samples first, a tensor or an array) filled up to ``size`` samples with copies of its last: the last
    chunk of a graph exported for a fixed batch, whose padding the caller drops again."""
    short = size - a.shape[0]
    if short <= 0:
        return a
    if isinstance(a, torch.Tensor):
        return torch.cat([a, a[-1:].expand(short, *a.shape[1:])])
    return np.concatenate([a, np.repeat(a[-1:], short, axis=0)])


def _fixed_batch(graph: onnx.GraphProto, input_names: list[str], shapes: dict) -> int | None:
    """The batch every graph input declares as a fixed first dimension, if they all do and every output is a float
    tensor of that batch (a graph computing shapes or sizes has no samples to split); None otherwise."""
    firsts = set()
    for vi in graph.input:
        if vi.name in input_names:
            dims = vi.type.tensor_type.shape.dim
            if not len(dims) or not dims[0].HasField("dim_value"):
                return None
            firsts.add(dims[0].dim_value)
    if len(firsts) != 1:
        return None
    batch = firsts.pop()
    for vi in graph.output:
        dims = shapes.get(vi.name)
        dtype = TORCH_OF_ONNX.get(vi.type.tensor_type.elem_type)
        if dtype is None or not dtype.is_floating_point or not dims or dims[0] != batch:
            return None
    return batch


def to_torch(model: onnx.ModelProto, limits: Limits = DEFAULT_LIMITS) -> OnnxGraph:
    """Convert a (loaded, checked) ONNX model to a torch module in eval mode.

    Any failure while building or folding a node becomes ``ModelRejected("conversion_failed")`` naming the node.
    """
    try:
        return OnnxGraph(model, limits).eval()
    except ModelRejected:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as e:
        raise ModelRejected("conversion_failed", f"{type(e).__name__}: {e}") from e
