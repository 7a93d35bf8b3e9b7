"""Distillation: the fake-quant model learns the FP32 model's outputs on unlabeled samples.

Loss per output, summed: score logits of a detection head (values outside [0, 1]) by the
Bernoulli KL divergence of the sigmoids (a -30000 logit and a -30 one are the same "no face");
everything else by MSE relative to the FP32 output's mean square (1 / SQNR), so outputs of
different magnitudes count alike. Adam; the best epoch by the held-out loss is kept; a time
budget or Ctrl-C stops after the current step and keeps the best checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .interpreter import QDQNet


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    time_budget_s: float | None = None
    lr: float = 1e-2            # weights move ~lr quantization steps per Adam step; scales ~lr/10 relative
    batch_size: int = 8
    seed: int = 0
    scale_lr: float | None = None   # activation scales (relative to PTQ's); default lr / 10


@dataclass
class TrainResult:
    epochs_run: int = 0
    steps: int = 0
    time_s: float = 0.0
    best_epoch: int = 0
    stopped_by: str = "epochs"
    curve: list[dict] = field(default_factory=list)   # per epoch: train_loss, holdout_loss (+ metric)


class Distiller:
    """Batches of samples (stacked along the graph's batch-1 axis when every input and output has
    one) and the loss against the FP32 outputs."""

    def __init__(self, net: QDQNet, feeds: Sequence[dict[str, np.ndarray]], targets: dict[str, np.ndarray],
                 score_outputs: Sequence[str] = ()) -> None:
        self.net = net
        self.feeds = feeds
        self.targets = {n: targets[n] for n in net.output_names}
        self.stack = all(v.shape[:1] == (1,) for f in feeds for v in f.values()) and \
            all(t.ndim >= 2 and t.shape[1] == 1 for t in self.targets.values())
        self.logits = {n for n in score_outputs if float(np.min(targets[n])) < 0 or float(np.max(targets[n])) > 1}
        self.norm = {n: max(float(np.mean(np.square(t.astype(np.float64)))), 1e-12) for n, t in self.targets.items()}

    def _batch(self, idx: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        names = self.net.input_names
        if self.stack:
            xs = [torch.from_numpy(np.concatenate([self.feeds[i][n] for i in idx]).astype(np.float32)) for n in names]
            ts = [torch.from_numpy(np.concatenate([self.targets[o][i] for i in idx]).astype(np.float32))
                  for o in self.net.output_names]
        else:
            (i,) = idx
            xs = [torch.from_numpy(np.array(self.feeds[i][n], np.float32)) for n in names]
            ts = [torch.from_numpy(np.array(self.targets[o][i], np.float32)) for o in self.net.output_names]
        return xs, ts

    def loss(self, outs: list[torch.Tensor], ts: list[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(())
        for name, y, t in zip(self.net.output_names, outs, ts):
            if name in self.logits:   # KL(sigmoid(t) || sigmoid(y)) = BCE(y, p) - BCE(t, p)
                p = torch.sigmoid(t)
                total = total + (F.binary_cross_entropy_with_logits(y, p)
                                 - F.binary_cross_entropy_with_logits(t, p))
            else:
                total = total + F.mse_loss(y, t) / self.norm[name]
        return total

    def batches(self, idx: Sequence[int], size: int) -> list[list[int]]:
        size = size if self.stack else 1
        return [list(idx[i:i + size]) for i in range(0, len(idx), size)]

    @torch.no_grad()
    def evaluate(self, idx: Sequence[int], size: int = 16) -> float:
        self.net.eval()
        if not idx:
            return float("nan")
        total = 0.0
        for b in self.batches(idx, size):
            xs, ts = self._batch(b)
            total += float(self.loss(self.net(*xs), ts)) * len(b)
        return total / len(idx)

    @torch.no_grad()
    def outputs(self, feeds: Sequence[dict[str, np.ndarray]], size: int = 16) -> dict[str, np.ndarray]:
        """The fake-quant model's outputs, stacked over samples like ``measure.fidelity`` stacks them."""
        self.net.eval()
        got: dict[str, list[np.ndarray]] = {n: [] for n in self.net.output_names}
        for start in range(0, len(feeds), size if self.stack else 1):
            part = feeds[start:start + (size if self.stack else 1)]
            xs = [torch.from_numpy(np.concatenate([f[n] for f in part]).astype(np.float32)) if self.stack
                  else torch.from_numpy(np.array(part[0][n], np.float32)) for n in self.net.input_names]
            for name, y in zip(self.net.output_names, self.net(*xs)):
                arr = y.numpy()
                got[name].extend([arr[i:i + 1] for i in range(arr.shape[0])] if self.stack else [arr])
        return {n: np.stack(v) for n, v in got.items()}


def train(d: Distiller, train_idx: Sequence[int], holdout_idx: Sequence[int], cfg: TrainConfig, *,
          progress: Callable[[str], None] | None = None,
          on_epoch: Callable[[QDQNet], dict] | None = None) -> TrainResult:
    """Train ``d.net`` in place; on return it holds the best epoch's state (epoch 0 = PTQ).
    ``on_epoch(net) -> dict`` adds entries (a running metric) to each epoch's curve row."""
    net = d.net
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    groups = [{"params": [p for m in net.weights.values() for p in m.parameters()], "lr": cfg.lr},
              {"params": [p for m in net.biases.values() for p in m.parameters()], "lr": cfg.lr},
              {"params": [p for m in net.scales.values() for p in m.parameters() if p.requires_grad],
               "lr": cfg.lr / 10 if cfg.scale_lr is None else cfg.scale_lr}]
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    res = TrainResult()
    start = time.perf_counter()

    def row(epoch: int, train_loss: float | None) -> dict:
        r = {"epoch": epoch, "train_loss": train_loss, "holdout_loss": d.evaluate(holdout_idx or train_idx),
             "time_s": round(time.perf_counter() - start, 2)}
        if on_epoch is not None:
            r.update(on_epoch(net))
        return r

    best = row(0, None)
    res.curve.append(best)
    best_state = copy.deepcopy(net.state_dict())
    say = progress or (lambda msg: None)
    say(_line(best, cfg.epochs))
    try:
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            order = [int(i) for i in rng.permutation(list(train_idx))]
            losses = []
            for b in d.batches(order, cfg.batch_size):
                xs, ts = d._batch(b)
                loss = d.loss(net(*xs), ts)
                opt.zero_grad()
                loss.backward()
                opt.step()
                res.steps += 1
                losses.append(float(loss.detach()))
                if cfg.time_budget_s is not None and time.perf_counter() - start > cfg.time_budget_s:
                    res.stopped_by = "time budget"
                    break
            r = row(epoch, float(np.mean(losses)) if losses else None)
            res.curve.append(r)
            res.epochs_run = epoch
            if math.isfinite(r["holdout_loss"]) and r["holdout_loss"] < best["holdout_loss"]:
                best, best_state = r, copy.deepcopy(net.state_dict())
            say(_line(r, cfg.epochs, best["epoch"]))
            if res.stopped_by != "epochs":
                break
    except KeyboardInterrupt:
        res.stopped_by = "interrupted"
    net.load_state_dict(best_state)
    net.eval()
    res.best_epoch = best["epoch"]
    res.time_s = round(time.perf_counter() - start, 2)
    return res


def _line(r: dict, epochs: int, best: int | None = None) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}"]
    if r.get("train_loss") is not None:
        parts.append(f"loss {r['train_loss']:.4g}")
    parts.append(f"held-out {r['holdout_loss']:.4g}")
    if r.get("metric") is not None:
        parts.append(f"{r.get('metric_name', 'metric')} {r['metric']:.4g}")
    if best is not None:
        parts.append(f"best epoch {best}")
    parts.append(f"{r['time_s']:.0f}s")
    return " · ".join(parts)
