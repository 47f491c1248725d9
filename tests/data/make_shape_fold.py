#!/usr/bin/python3
"""Writes shape_fold.onnx (run from tests/data with Debian's python3-onnx).

The pattern of the ONNX model zoo's older graphs (../shared/models/onnx/light)
in miniature: IR version 3, every initializer also a graph input, weights
made by ConstantOfShape from `*__SHAPE` initializers. Two of those hold the
same shape, and ONNX Runtime's saved optimized graph then lists one of them
as a new required input: the graph keel must not cache.

    y = Conv(Conv(x, w0 = 0.5), w1 = 0.25)   x, y: float32[1,2,2,2]
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])]
inits, nodes, prev = [], [], "x"
for i, v in enumerate([0.5, 0.25]):
    shape = f"w{i}__SHAPE"
    inputs.append(helper.make_tensor_value_info(shape, TensorProto.INT64, [4]))
    inits.append(numpy_helper.from_array(np.array([2, 2, 1, 1], dtype=np.int64), shape))
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [v])
    nodes.append(helper.make_node("ConstantOfShape", [shape], [f"w{i}"], value=value))
    out = "y" if i == 1 else f"h{i}"
    nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], kernel_shape=[1, 1]))
    prev = out
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])
graph = helper.make_graph(nodes, "shape_fold", inputs, [y], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)],
                          producer_name="keel-tests")
model.ir_version = 3
onnx.checker.check_model(model)
onnx.save(model, "shape_fold.onnx")
