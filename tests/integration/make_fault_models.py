#!/usr/bin/python3
"""Writes the fault-injection ONNX fixtures of tests/integration/22-failover.sh.

Every model has the same contract, x f32[-1,4] -> y f32[-1,3], so any of them
can sit in any tier of one package:

  good.onnx           y = Softmax(x @ W + b)
  runtime_error.onnx  loads, but every run fails: Gather of column 7 of x,
                      which has 4 columns (ONNX Runtime checks the indices
                      at run time; x is an input, so nothing is folded)
  nan.onnx            y = Log(-(|x @ W| + 1)): NaN for every input
  flaky.onnx          fails only for rows with x[0] < 0: GatherElements of x
                      with indices [0,1,2] + 1000 * (x[0] < 0); else like good
  slow.onnx           y as good, plus a chain of STEPS MatMuls of a 512x512
                      matrix made at run time from x (Expand), times a
                      constant one (ConstantOfShape): a few KB on disk, about
                      half a second to a second per run on one thread; the
                      values stay in (0, 1/512), so the output is finite
  big.onnx            y as good, plus the mean of x @ B, B = ConstantOfShape
                      [4, 2^18] (4 MiB once ONNX Runtime folds it at load):
                      tiny on disk, large in memory, for memory_mb budgets

Usage: make_fault_models.py OUTDIR [--steps N]
Needs python3-onnx (and numpy); nothing is downloaded.
"""
import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
W = np.array([[0.5, -0.25, 0.1],
              [0.2, 0.3, -0.4],
              [-0.6, 0.15, 0.25],
              [0.05, -0.1, 0.35]], dtype=np.float32)
B = np.array([0.1, 0.0, -0.1], dtype=np.float32)


def io():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    return x, y


def const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def save(path, nodes, inits, doc):
    x, y = io()
    g = helper.make_graph(nodes, os.path.splitext(os.path.basename(path))[0], [x], [y],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="keel tests/integration/make_fault_models.py")
    m.ir_version = IR_VERSION
    m.doc_string = doc
    onnx.checker.check_model(m)
    onnx.save(m, path)


def logits(out="logits"):
    """x @ W + b into `out`."""
    return [helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], [out])], [const("W", W), const("b", B)]


def good(path):
    nodes, inits = logits()
    nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    save(path, nodes, inits, "good: y = Softmax(x @ W + b)")


def runtime_error(path):
    nodes = [helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=1)]
    save(path, nodes, [const("idx", np.array([0, 1, 7], dtype=np.int64))],
         "runtime_error: Gather of column 7 of a 4-column input fails on every run")


def nan(path):
    nodes, inits = logits()
    nodes += [helper.make_node("Abs", ["logits"], ["a"]),
              helper.make_node("Add", ["a", "one"], ["a1"]),
              helper.make_node("Neg", ["a1"], ["neg"]),
              helper.make_node("Log", ["neg"], ["y"])]
    inits.append(const("one", np.array(1.0, dtype=np.float32)))
    save(path, nodes, inits, "nan: y = Log(-(|x @ W + b| + 1)) is NaN for every input")


def flaky(path):
    nodes, inits = logits()
    nodes += [
        helper.make_node("Slice", ["x", "s0", "s1", "s_ax"], ["x0"]),  # [N,1]
        helper.make_node("Less", ["x0", "zero"], ["neg"]),
        helper.make_node("Cast", ["neg"], ["negi"], to=TensorProto.INT64),
        helper.make_node("Mul", ["negi", "thousand"], ["off"]),  # [N,1]
        helper.make_node("Add", ["off", "cols"], ["ix"]),  # [N,3]
        helper.make_node("GatherElements", ["x", "ix"], ["picked"], axis=1),  # [N,3]
        helper.make_node("Mul", ["picked", "fzero"], ["nothing"]),  # 0, keeps it used
        helper.make_node("Add", ["logits", "nothing"], ["l2"]),
        helper.make_node("Softmax", ["l2"], ["y"], axis=1),
    ]
    inits += [const("s0", np.array([0], dtype=np.int64)),
              const("s1", np.array([1], dtype=np.int64)),
              const("s_ax", np.array([1], dtype=np.int64)),
              const("zero", np.array(0.0, dtype=np.float32)),
              const("fzero", np.array(0.0, dtype=np.float32)),
              const("thousand", np.array(1000, dtype=np.int64)),
              const("cols", np.array([0, 1, 2], dtype=np.int64))]
    save(path, nodes, inits,
         "flaky: GatherElements index 1000+ (out of range) for rows with x[0] < 0; "
         "else Softmax(x @ W + b)")


def slow(path, steps, n=512):
    nodes, inits = logits()
    nodes += [
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1),  # [1,1]
        helper.make_node("Sigmoid", ["m"], ["sg"]),
        helper.make_node("Mul", ["sg", "inv_n"], ["sgn"]),  # in (0, 1/n)
        helper.make_node("Expand", ["sgn", "nn"], ["h0"]),  # [n,n], made at run time
        helper.make_node("ConstantOfShape", ["nn"], ["J"],
                         value=numpy_helper.from_array(np.array([1.0 / n], dtype=np.float32))),
    ]
    prev = "h0"
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [prev, "J"], [f"h{i + 1}"]))
        prev = f"h{i + 1}"
    nodes += [helper.make_node("ReduceMean", [prev], ["hm"], keepdims=1),  # [1,1]
              helper.make_node("Add", ["logits", "hm"], ["l2"]),
              helper.make_node("Softmax", ["l2"], ["y"], axis=1)]
    inits += [const("inv_n", np.array(1.0 / n, dtype=np.float32)),
              const("nn", np.array([n, n], dtype=np.int64))]
    save(path, nodes, inits,
         f"slow: {steps} MatMuls of {n}x{n} matrices made at run time, then Softmax(x @ W + b)")


def big(path, cols=1 << 18):
    nodes, inits = logits()
    nodes += [
        helper.make_node("ConstantOfShape", ["shape"], ["Big"],
                         value=numpy_helper.from_array(np.array([1e-3], dtype=np.float32))),
        helper.make_node("MatMul", ["x", "Big"], ["xb"]),  # [N, cols]
        helper.make_node("ReduceMean", ["xb"], ["r"], axes=[1], keepdims=1),  # [N,1]
        helper.make_node("Add", ["logits", "r"], ["l2"]),
        helper.make_node("Softmax", ["l2"], ["y"], axis=1),
    ]
    inits.append(const("shape", np.array([4, cols], dtype=np.int64)))
    save(path, nodes, inits,
         f"big: a [4,{cols}] float32 ConstantOfShape ({cols * 16 >> 20} MiB once folded)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--steps", type=int, default=400, help="MatMuls in slow.onnx")
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    good(os.path.join(a.outdir, "good.onnx"))
    runtime_error(os.path.join(a.outdir, "runtime_error.onnx"))
    nan(os.path.join(a.outdir, "nan.onnx"))
    flaky(os.path.join(a.outdir, "flaky.onnx"))
    slow(os.path.join(a.outdir, "slow.onnx"), a.steps)
    big(os.path.join(a.outdir, "big.onnx"))


if __name__ == "__main__":
    main()
