"""Hugging Face BertModel (TorchScript exporter, opset 17), dynamic INT8: FP32 vs onnxruntime's
default ``quantize_dynamic`` vs edgequant's ``quantize --mode dynamic``, 1 thread, interleaved.

    benchmarks/.venv/bin/python benchmarks/export_hf_bert.py          # hf_bert.onnx, hf_bert_dynheads.onnx
    .venv/bin/python benchmarks/bench_hf_bert.py [--rounds 100] [--threads 1]

Models (``export_hf_bert.py``): all-MiniLM-L6-v2's weights in ``transformers.BertModel``;
``hf_bert_dynheads`` views Q/K/V with -1 heads (newer transformers), where onnxruntime's optimizer
cannot detect num_heads. Variants:

* ``ort_default_dynamic``: ``quantize_dynamic(model, out)``, its defaults, on the raw export.
* ``edgequant``: ``edgequant quantize --mode dynamic`` defaults (target rule, per-channel int8
  weights; fused/unfused and SkipLayerNorm/Add+LayerNorm chosen by its quick timing).
* ``edgequant_data``: the same with ``--calib`` set to the 16 evaluation texts, whose first (a
  sentence padded to 128 tokens) then feeds the quick timing instead of random all-attend inputs.
* ``edgequant_smoothquant``: ``--smooth-quant`` with ``--calib`` set to 100 real texts
  (``bench_data.reference_texts``, none of them an evaluation sentence): per-activation SmoothQuant,
  an added Mul where the LayerNorm cannot absorb it (what ``tune`` tries on the dynamic default).
* ``edgequant_smoothquant_gptq``: the same plus ``--gptq`` (error-compensating weight rounding on
  the same 100 texts; what ``tune`` tries next).
* ``fp32-opt``: the export after edgequant's exact FP32 rewrites (Softmax inputs floored), what
  ``run``/``tune`` time as ``fp32-opt``.
* ``edgequant_fused`` / ``edgequant_unfused``: the same with ``--fuse-transformer`` /
  ``--no-fuse-transformer`` (what ``run``/``tune`` time as ``dynamic`` / ``dynamic-unfused``).
* ``ort_default_dynamic+sum``: ORT's default model with edgequant's residual-Add-as-Sum rewrite
  only, to show how much of the gain is onnxruntime's SkipLayerNormalization kernel.

Fidelity: cosine of the mean-pooled sentence embedding (what MiniLM is used for) and of every
real token's hidden state, vs FP32, on 16 tokenized English texts. Writes
``HF_BERT.md`` and ``hf_bert.json`` in the ISA's results folder (``results/``, ``results/vnni/``,
``results/amx/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from bench_data import reference_texts, samples, text_feeds  # noqa: E402
from bench_report import isa_results_dir, machine, outputs  # noqa: E402
from bench_timing import interleaved, speedup_ci  # noqa: E402

from edgequant.qdq import coverage  # noqa: E402

MODELS = ("hf_bert_dynheads", "hf_bert")
EVAL_N = 16
CALIB_N = 100        # real texts for --smooth-quant's channel statistics
GOAL_FP32, GOAL_ORT = 2.5, 1.15


def _ort_default(src: Path, out: Path) -> dict:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(out))
    return {"recipe": "onnxruntime.quantization.quantize_dynamic(model, out) (defaults)"}


def _ort_default_sum(src: Path, out: Path, ort_default: Path) -> dict:
    from edgequant.qdq.encoder_graph import unfuse_skip_layernorm

    model = onnx.load(str(ort_default))
    n = unfuse_skip_layernorm(model)
    onnx.save(model, str(out))
    return {"recipe": f"ort_default_dynamic + edgequant unfuse_skip_layernorm ({n} residual Add -> Sum)"}


def _fp32_opt(src: Path, out: Path) -> dict:
    from edgequant.pipeline import fp32_rewrite_candidate

    (cand,) = fp32_rewrite_candidate(src, onnx.load(str(src)), out.parent)   # writes <stem>.fp32-opt.onnx
    assert cand.path == out, (cand.path, out)
    return {"recipe": "edgequant's exact FP32 rewrites (run/tune's fp32-opt)", "notes": list(cand.notes)}


def _edgequant(src: Path, out: Path, **overrides) -> dict:
    from edgequant import api

    res = api.quantize(src, out, mode="dynamic", force=True, **overrides)
    flags = " ".join(f"{k}={v}" for k, v in overrides.items())
    return {"recipe": f"edgequant.api.quantize(mode='dynamic'{', ' + flags if flags else ''})",
            "config": res.config.to_dict(), "notes": list(res.notes), "warnings": list(res.warnings)}


def _cosines(ref: list[np.ndarray], got: list[np.ndarray], feeds: list[dict]) -> dict:
    pooled, tokens = [], []
    for r, g, f in zip(ref, got, feeds):
        m = f["attention_mask"][0].astype(bool)
        rt, gt = r[0][m].astype(np.float64), g[0][m].astype(np.float64)
        pr, pg = rt.mean(0), gt.mean(0)
        pooled.append(pr @ pg / np.linalg.norm(pr) / np.linalg.norm(pg))
        tokens.extend((rt * gt).sum(1) / np.linalg.norm(rt, axis=1) / np.linalg.norm(gt, axis=1))
    return {"pooled_cosine_mean": float(np.mean(pooled)), "pooled_cosine_min": float(np.min(pooled)),
            "token_cosine_mean": float(np.mean(tokens)), "token_cosine_min": float(np.min(tokens))}


def bench(name: str, rounds: int, threads: int) -> dict:
    src = HERE / ".models" / f"{name}.onnx"
    work = HERE / ".work" / "hf_bert"
    work.mkdir(parents=True, exist_ok=True)
    p = {k: work / f"{name}.{k}.onnx" for k in ("fp32-opt", "ort_default_dynamic", "ort_default_dynamic+sum",
                                                "edgequant", "edgequant_data", "edgequant_smoothquant",
                                                "edgequant_smoothquant_gptq", "edgequant_fused",
                                                "edgequant_unfused")}
    info: dict[str, dict] = {"fp32": {"recipe": "the export"}}
    evals = samples("tokens", EVAL_N, seed=1000)
    texts = work / "texts.npz"     # what a user passes as --calib: real (padded) inputs for the timing
    np.savez(texts, **{k: np.concatenate([f[k] for f in evals]) for k in evals[0]})
    calib_feeds = text_feeds(reference_texts()[:CALIB_N])
    calib = work / "calib_texts.npz"
    np.savez(calib, **{k: np.concatenate([f[k] for f in calib_feeds]) for k in calib_feeds[0]})
    builders = {"fp32-opt": lambda: _fp32_opt(src, p["fp32-opt"]),
                "ort_default_dynamic": lambda: _ort_default(src, p["ort_default_dynamic"]),
                "ort_default_dynamic+sum": lambda: _ort_default_sum(src, p["ort_default_dynamic+sum"],
                                                                   p["ort_default_dynamic"]),
                "edgequant": lambda: _edgequant(src, p["edgequant"]),
                "edgequant_data": lambda: _edgequant(src, p["edgequant_data"], calib=str(texts)),
                "edgequant_smoothquant": lambda: _edgequant(src, p["edgequant_smoothquant"], calib=str(calib),
                                                            smooth_quant=True),
                "edgequant_smoothquant_gptq": lambda: _edgequant(src, p["edgequant_smoothquant_gptq"],
                                                                 calib=str(calib), smooth_quant=True, gptq=True),
                "edgequant_fused": lambda: _edgequant(src, p["edgequant_fused"], fuse_transformer=True),
                "edgequant_unfused": lambda: _edgequant(src, p["edgequant_unfused"], fuse_transformer=False)}
    for k, build in builders.items():
        t0 = time.perf_counter()
        info[k] = build()
        info[k]["quantize_seconds"] = time.perf_counter() - t0
        print(f"[{name}] built {k} in {info[k]['quantize_seconds']:.1f}s", flush=True)
    paths = {"fp32": src, **p}
    ref = outputs(str(src), evals)
    res: dict = {"model": str(src.relative_to(HERE.parent)), "threads": threads, "rounds": rounds, "variants": {}}
    digests = {k: hashlib.sha256(v.read_bytes()).hexdigest() for k, v in paths.items()}
    for k, path in paths.items():
        cov = coverage(path)
        res["variants"][k] = {"path": str(path.relative_to(HERE.parent)), "size_mb": path.stat().st_size / 1e6,
                              "int8_ops": f"{cov.quantized_compute_ops}/{cov.compute_ops}",
                              "fidelity": None if k == "fp32" else _cosines(ref, outputs(str(path), evals), evals),
                              "same_file_as": next((o for o in paths if o != k and digests[o] == digests[k]
                                                    and list(paths).index(o) < list(paths).index(k)), None),
                              **info[k]}
    res["loadavg_before"] = os.getloadavg()
    timings = interleaved({k: str(v) for k, v in paths.items()}, evals[0], threads=threads, rounds=rounds)
    res["loadavg_after"] = os.getloadavg()
    for k, tm in timings.items():
        v = res["variants"][k]
        v["latency"] = tm.summary()
        if k != "fp32":
            v["vs_fp32"] = speedup_ci(timings["fp32"], tm)
            v["vs_ort_default_dynamic"] = speedup_ci(timings["ort_default_dynamic"], tm)
    print(f"[{name}] " + ", ".join(f"{k} {tm.median:.2f}ms" for k, tm in timings.items()), flush=True)
    return res


def _sp(s: dict | None) -> str:
    return f"{s['speedup']:.2f}x [{s['ci95_low']:.2f}-{s['ci95_high']:.2f}]" if s else "-"


def write_markdown(doc: dict, path: Path) -> None:
    m = doc["machine"]
    lines = ["# Hugging Face BertModel, dynamic INT8 (issue 14)", "",
             f"Command: `{doc['command']}` ({doc['wall_s']:.0f} s). Latency: every variant once per round, "
             "random order each round, one process, "
             f"{doc['threads']} thread(s); medians; speedups with 95% paired bootstrap intervals over rounds. "
             "Fidelity on 16 tokenized English texts (seq 128, padded): cosine of the mean-pooled sentence "
             "embedding and of each real token's hidden state vs FP32.", "",
             f"Machine: {m['cpu']} ({m['cores']} cores), ISA: {', '.join(m['isa'])}; VNNI: "
             f"{'yes' if m['vnni'] else 'no'}; device cpu; onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, "
             f"python {m['python']}. Shared with other jobs: load averages below. Two rows marked \"same "
             "file\" time one model twice: how far apart they land is the noise of that run.", ""]
    for name, r in doc["models"].items():
        lines += [f"## {name}", "", f"`{r['model']}`, {r['rounds']} rounds. Load average before/after timing: "
                  f"{', '.join(f'{x:.2f}' for x in r['loadavg_before'])} / "
                  f"{', '.join(f'{x:.2f}' for x in r['loadavg_after'])}.", "",
                  "| variant | int8 ops | size MB | pooled cosine (min) | token cosine (min) | median ms | vs FP32 "
                  "| vs ORT default dynamic |", "|---|---|---|---|---|---|---|---|"]
        for k, v in r["variants"].items():
            f = v["fidelity"]
            fid = (f"{f['pooled_cosine_mean']:.4f} ({f['pooled_cosine_min']:.4f}) | {f['token_cosine_mean']:.4f} "
                   f"({f['token_cosine_min']:.4f})") if f else "1 | 1"
            same = f" (same file as {v['same_file_as']})" if v.get("same_file_as") else ""
            lines.append(f"| {k}{same} | {v['int8_ops']} | {v['size_mb']:.1f} | {fid} | {v['latency']['median_ms']:.2f} | "
                         f"{_sp(v.get('vs_fp32'))} | {_sp(v.get('vs_ort_default_dynamic'))} |")
        for key, how in (("edgequant", "no data: random inputs, timed with masks attending everywhere and half padded"),
                         ("edgequant_data", "`--calib` with the 16 texts: their first, padded, times the graphs"),
                         ("edgequant_smoothquant", f"`--smooth-quant --calib` with {CALIB_N} other real texts"),
                         ("edgequant_smoothquant_gptq", f"`--smooth-quant --gptq --calib` with {CALIB_N} other real "
                          "texts")):
            eq = r["variants"].get(key)
            if eq is None:
                continue
            fp, ortd = eq["vs_fp32"], eq["vs_ort_default_dynamic"]
            choice = next((n for n in eq.get("notes", []) if n.startswith("transformer encoder:")), "")
            lines += ["", f"{key} ({how}) chose: {choice.removeprefix('transformer encoder: ')}", "",
                      f"Goals ({key}, 1 thread): >= {GOAL_FP32}x FP32: {fp['speedup']:.2f}x "
                      f"(**{'met' if fp['speedup'] >= GOAL_FP32 else 'not met'}**); >= {GOAL_ORT}x ORT default "
                      f"dynamic: {ortd['speedup']:.2f}x (**{'met' if ortd['speedup'] >= GOAL_ORT else 'not met'}**); "
                      f"pooled cosine >= 0.99: {eq['fidelity']['pooled_cosine_mean']:.4f} (**"
                      f"{'met' if eq['fidelity']['pooled_cosine_mean'] >= 0.99 else 'not met'}**)."]
        lines.append("")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    mach = machine()
    doc = {"machine": mach, "threads": args.threads,
           "command": ".venv/bin/python benchmarks/bench_hf_bert.py " + " ".join(sys.argv[1:]),
           "models": {name: bench(name, args.rounds, args.threads) for name in args.models.split(",")}}
    doc["wall_s"] = time.perf_counter() - t0
    out_dir = isa_results_dir(HERE / "results", mach)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "hf_bert.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, out_dir / "hf_bert.json")
    write_markdown(doc, out_dir / "HF_BERT.md")
    print(f"wrote {out_dir / 'HF_BERT.md'}")


if __name__ == "__main__":
    main()
