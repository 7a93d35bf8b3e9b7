"""Padding positions (attention mask 0) are left out of output fidelity: nothing downstream reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import onnx_models

from edgequant.data import open_source
from edgequant.measure.fidelity import compare_outputs
from edgequant.measure.padding import describe, padding_masks
from edgequant.model import graph_inputs

RNG = np.random.default_rng(11)


def _source(tmp_path: Path, mask: np.ndarray):
    model = onnx_models.bert_layers()
    n, t = mask.shape
    np.savez(tmp_path / "tokens.npz", x=RNG.standard_normal((n, t, 32)).astype(np.float32),
             attention_mask=mask.astype(np.int64))
    return open_source(str(tmp_path / "tokens.npz"), graph_inputs(model))


def test_masks_come_from_the_attention_mask_input(tmp_path: Path) -> None:
    mask = np.ones((4, 16), bool)
    mask[:, 10:] = False
    ref = {"hidden": np.zeros((4, 16, 32)), "pooled": np.zeros((4, 32))}
    masks = padding_masks(_source(tmp_path, mask), ref)
    assert list(masks) == ["hidden"] and np.array_equal(masks["hidden"], mask)
    assert "38%" in describe(masks) and "hidden" in describe(masks)
    assert padding_masks(_source(tmp_path, np.ones((4, 16), bool)), ref) == {}   # nothing padded


def test_padding_positions_do_not_count(tmp_path: Path) -> None:
    mask = np.ones((6, 16), bool)
    mask[:, 4:] = False
    ref = RNG.standard_normal((6, 16, 32))
    cand = ref.copy()
    cand[:, 4:] += RNG.standard_normal((6, 12, 32)) * 5          # garbage only where nothing reads
    stacked = {"h": mask[:, None, :]}                              # how devices stack batch-1 samples
    assert compare_outputs({"h": ref[:, None]}, {"h": cand[:, None]}, {"h": "embedding"}, padding=stacked).sqnr_db \
        == float("inf")
    for role in ("embedding", "dense", None):
        roles = {"h": role} if role else None
        plain = compare_outputs({"h": ref}, {"h": cand}, roles)
        masked = compare_outputs({"h": ref}, {"h": cand}, roles, padding={"h": mask})
        assert plain.cosine < 0.5 and masked.cosine == pytest.approx(1.0) and masked.sqnr_db == float("inf")
    seq = ref.copy()
    seq[:, 4:] = -seq[:, 4:]                                       # every padded position's arg-max moves
    assert compare_outputs({"h": ref}, {"h": seq}, {"h": "sequence"}).top1_agreement < 0.5
    assert compare_outputs({"h": ref}, {"h": seq}, {"h": "sequence"}, padding={"h": mask}).top1_agreement == 1.0


def test_evaluate_leaves_padding_out_and_says_so(tmp_path: Path) -> None:
    from edgequant import api

    model = onnx_models.save(onnx_models.bert_layers(), tmp_path / "bert.onnx")
    mask = np.ones((4, 16), np.int64)
    mask[:, 6:] = 0
    np.savez(tmp_path / "tokens.npz", x=RNG.standard_normal((4, 16, 32)).astype(np.float32), attention_mask=mask)
    res = api.evaluate(model, str(tmp_path / "tokens.npz"), reference=model)
    assert any("padding positions" in n for n in res.notes)
