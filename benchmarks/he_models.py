"""The light ImageNet test nets shipped with onnx (AlexNet, VGG-19, ResNet-50) with random He-initialised weights.

The light models carry constant weights (every kernel a constant tensor): their Lipschitz constant is 0 after the
first ReLU of a symmetric layer, so they cannot judge how tight a network bound is. Here every Conv and Gemm weight
is drawn from N(0, 2 / fan_in) (He et al. 2015), biases are 0, BatchNorm is the identity (scale 1, bias 0, mean 0,
variance 1), the batch is 1 and the final Softmax is dropped (the bound is on the logits).
"""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT = {"alexnet": "light_bvlc_alexnet", "vgg19": "light_vgg19", "resnet50": "light_resnet50"}
_BN_VALUES = {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}  # BatchNormalization inputs: scale, bias, mean, variance


def light_path(name: str) -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"{LIGHT[name]}.onnx")


def he_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light model ``name`` with He-initialised weights (see the module docstring)."""
    model = onnx.load(light_path(name))
    graph = model.graph
    rng = np.random.default_rng(seed)
    shapes = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    roles: dict[str, tuple[str, int]] = {}
    for node in graph.node:
        for index, tensor in enumerate(node.input):
            roles.setdefault(tensor, (node.op_type, index))
    kept, values = [], {}
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            dims = [int(d) for d in shapes[node.input[0]]]
            op, index = roles.get(node.output[0], ("", -1))
            if op in ("Conv", "Gemm") and index == 1:
                fan_in = math.prod(dims[1:])
                values[node.output[0]] = rng.normal(0.0, math.sqrt(2.0 / fan_in), dims).astype(np.float32)
            elif op == "BatchNormalization":
                values[node.output[0]] = np.full(dims, _BN_VALUES[index], dtype=np.float32)
            else:
                values[node.output[0]] = np.zeros(dims, dtype=np.float32)
            continue
        kept.append(node)
    if kept and kept[-1].op_type == "Softmax":
        graph.output[0].name = kept[-1].input[0]
        kept = kept[:-1]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in values.items())
    if model.ir_version < 4:  # initializers must also be graph inputs before IR version 4
        graph.input.extend(onnx.helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape)
                           for k, v in values.items())
    data = next(n.input[0] for n in graph.node if n.op_type == "Conv")
    for value_info in [i for i in graph.input if i.name == data] + [graph.output[0]]:
        value_info.type.tensor_type.shape.dim[0].dim_value = 1
    del graph.value_info[:]
    return model
