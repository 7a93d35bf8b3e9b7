"""Small real ONNX models built with onnx.helper for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def conv_net(opset: int = 12, channels: int = 64, size: int = 16, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Weight-heavy conv classifier: 3x(Conv+Relu) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "input", 3
    for i in range(3):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (channels, cin, 3, 3))
        b = rng.normal(0, 0.01, (channels,))
        inits += [_init(f"conv{i}.w", w), _init(f"conv{i}.b", b)]
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"],
                                      name=f"conv{i}", pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        prev, cin = f"relu{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    inits += [_init("fc.w", rng.normal(0, 0.1, (classes, channels))), _init("fc.b", np.zeros(classes))]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgequant-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def matmul_net(hidden: int = 256, features: int = 64, classes: int = 8, seed: int = 1) -> onnx.ModelProto:
    """Two-layer MLP: MatMul+Add+Relu -> MatMul+Add."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.1, (features, hidden))), _init("b1", np.zeros(hidden)),
             _init("w2", rng.normal(0, 0.1, (hidden, classes))), _init("b2", np.zeros(classes))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "w2"], ["y0"], name="mm2"),
        helper.make_node("Add", ["y0", "b2"], ["y"], name="add2"),
    ]
    graph = helper.make_graph(nodes, "matmul_net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgequant-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bert_layers(layers: int = 2, heads: int = 4, head_size: int = 8, ffn: int = 64, *, heads_in_shape: bool = True,
                seed: int = 2) -> onnx.ModelProto:
    """Post-LN BERT encoder layers as the TorchScript exporter writes them (opset 17): inputs
    ``x`` [batch, sequence, hidden] and ``attention_mask`` [batch, sequence] (int64), the
    extended mask ``(1 - mask) * -10000``, Q/K/V split into heads by Reshape to a shape built
    from Shape/Gather/Unsqueeze/Concat. ``heads_in_shape=False`` writes that shape as
    (batch, sequence, -1, head_size), as newer Hugging Face exports do."""
    rng = np.random.default_rng(seed)
    hidden = heads * head_size
    n = helper.make_node
    inits = [_init("one", np.array(1.0)), _init("neg", np.array(-10000.0)), _init("sqrt_d", np.array(np.sqrt(head_size))),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array(0, np.int64), "i0"), numpy_helper.from_array(np.array(1, np.int64), "i1"),
             numpy_helper.from_array(np.array([heads if heads_in_shape else -1], np.int64), "c_heads"),
             numpy_helper.from_array(np.array([head_size], np.int64), "c_head"),
             numpy_helper.from_array(np.array([hidden], np.int64), "c_hidden"),
             _init("ln0.g", rng.normal(1, 0.1, hidden)), _init("ln0.b", rng.normal(0, 0.1, hidden))]
    nodes = [n("Unsqueeze", ["attention_mask", "ax1"], ["m1"]), n("Unsqueeze", ["m1", "ax2"], ["m2"]),
             n("Cast", ["m2"], ["m3"], to=TensorProto.FLOAT), n("Sub", ["one", "m3"], ["m4"]),
             n("Mul", ["m4", "neg"], ["mask_bias"]),
             n("LayerNormalization", ["x", "ln0.g", "ln0.b"], ["h0"], axis=-1, epsilon=1e-12)]
    prev = "h0"
    for i in range(layers):
        p = f"l{i}."

        def linear(name: str, inp: str, cin: int, cout: int) -> str:
            inits.extend([_init(p + name + ".w", rng.normal(0, 1 / np.sqrt(cin), (cin, cout))),
                          _init(p + name + ".b", rng.normal(0, 0.02, cout))])
            nodes.extend([n("MatMul", [inp, p + name + ".w"], [p + name + ".mm"]),
                          n("Add", [p + name + ".b", p + name + ".mm"], [p + name])])
            return p + name

        def heads_of(t: str, perm: list[int]) -> str:
            # shape = (batch, seq, heads, head_size) or (batch, seq, -1, head_size), from Shape/Gather
            nodes.extend([n("Shape", [t], [t + ".shape"]), n("Gather", [t + ".shape", "i0"], [t + ".dim0"], axis=0),
                          n("Unsqueeze", [t + ".dim0", "ax0"], [t + ".bu"]),
                          n("Gather", [t + ".shape", "i1"], [t + ".dim1"], axis=0),
                          n("Unsqueeze", [t + ".dim1", "ax0"], [t + ".su"]),
                          n("Concat", [t + ".bu", t + ".su", "c_heads", "c_head"], [t + ".target"], axis=0),
                          n("Reshape", [t, t + ".target"], [t + ".split"]),
                          n("Transpose", [t + ".split"], [t + ".t"], perm=perm)])
            return t + ".t"

        q = heads_of(linear("q", prev, hidden, hidden), [0, 2, 1, 3])
        k = heads_of(linear("k", prev, hidden, hidden), [0, 2, 3, 1])
        v = heads_of(linear("v", prev, hidden, hidden), [0, 2, 1, 3])
        nodes.extend([n("MatMul", [q, k], [p + "qk"]), n("Div", [p + "qk", "sqrt_d"], [p + "qk.s"]),
                      n("Add", [p + "qk.s", "mask_bias"], [p + "qk.m"]), n("Softmax", [p + "qk.m"], [p + "probs"], axis=-1),
                      n("MatMul", [p + "probs", v], [p + "ctx"]),
                      n("Transpose", [p + "ctx"], [p + "ctx.t"], perm=[0, 2, 1, 3]),
                      n("Shape", [p + "ctx.t"], [p + "ctx.shape"]),
                      n("Gather", [p + "ctx.shape", "i0"], [p + "ctx.b"], axis=0),
                      n("Unsqueeze", [p + "ctx.b", "ax0"], [p + "ctx.bu"]),
                      n("Gather", [p + "ctx.shape", "i1"], [p + "ctx.s"], axis=0),
                      n("Unsqueeze", [p + "ctx.s", "ax0"], [p + "ctx.su"]),
                      n("Concat", [p + "ctx.bu", p + "ctx.su", "c_hidden"], [p + "ctx.target"], axis=0),
                      n("Reshape", [p + "ctx.t", p + "ctx.target"], [p + "ctx.merged"])])
        o = linear("o", p + "ctx.merged", hidden, hidden)
        inits.extend([_init(p + "ln1.g", rng.normal(1, 0.1, hidden)), _init(p + "ln1.b", rng.normal(0, 0.1, hidden)),
                      _init(p + "ln2.g", rng.normal(1, 0.1, hidden)), _init(p + "ln2.b", rng.normal(0, 0.1, hidden)),
                      _init(p + "sqrt2", np.array(np.sqrt(2.0))), _init(p + "half", np.array(0.5))])
        nodes.extend([n("Add", [o, prev], [p + "res1"]),
                      n("LayerNormalization", [p + "res1", p + "ln1.g", p + "ln1.b"], [p + "h1"], axis=-1, epsilon=1e-12)])
        f1 = linear("fc1", p + "h1", hidden, ffn)
        nodes.extend([n("Div", [f1, p + "sqrt2"], [p + "g0"]), n("Erf", [p + "g0"], [p + "g1"]),
                      n("Add", [p + "g1", "one"], [p + "g2"]), n("Mul", [f1, p + "g2"], [p + "g3"]),
                      n("Mul", [p + "g3", p + "half"], [p + "gelu"])])
        f2 = linear("fc2", p + "gelu", ffn, hidden)
        nodes.extend([n("Add", [f2, p + "h1"], [p + "res2"]),
                      n("LayerNormalization", [p + "res2", p + "ln2.g", p + "ln2.b"], [p + "h2"], axis=-1, epsilon=1e-12)])
        prev = p + "h2"
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "ax0"))
    nodes.append(n("Identity", [prev], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes, "bert_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])], inits)
    # producer "pytorch": onnxruntime's bert optimizer checks it (and only warns otherwise)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def inverse_matmul(seed: int = 0) -> onnx.ModelProto:
    """com.microsoft:Inverse -> MatMul: onnxruntime runs it, but its symbolic shape inference cannot type
    the Inverse output without guessing its rank, and ONNX's own inference leaves it untyped."""
    w = _init("w", np.random.default_rng(seed).normal(0, 0.5, (4, 4)).astype(np.float32))
    nodes = [helper.make_node("Inverse", ["x"], ["inv"], domain="com.microsoft", name="inverse"),
             helper.make_node("MatMul", ["inv", "w"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "inverse_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path
