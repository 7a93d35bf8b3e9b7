"""In-guest runner of the arm64-emu device: runs inside the arm64 root under qemu-user.

Standalone on purpose (the guest has numpy and onnxruntime, not edgequant). One job per call:
``python runner.py JOB.json``, where the job names the models, an inputs ``.npz`` (keys
``s{sample}__{input}``) and what to do:

* ``"outputs"``: every model on every sample -> ``outputs.npz`` (keys ``m{model}__s{sample}__{k}``)
  plus ``outputs.json`` with each model's output names;
* ``"optimize"``: each model's graph after onnxruntime's ``extended`` optimization on this CPU ->
  ``optimized{model}.onnx`` (INT8 coverage as the arm64 build of onnxruntime fuses it).

Nothing is unpickled: ``allow_pickle=False`` both ways.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _options(job):
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(job.get("threads", 1))
    so.log_severity_level = 4
    return so


def run_outputs(job, base):
    with np.load(base / job["inputs"], allow_pickle=False) as npz:
        keys = list(npz.files)
        samples = sorted({int(k.split("__", 1)[0][1:]) for k in keys})
        feeds = {i: {k.split("__", 1)[1]: npz[k] for k in keys if k.startswith(f"s{i}__")} for i in samples}
    results, names = {}, []
    for m, model in enumerate(job["models"]):
        sess = ort.InferenceSession(str(base / model), _options(job), providers=["CPUExecutionProvider"])
        wanted = [o.name for o in sess.get_outputs()]
        names.append(wanted)
        inputs = [i.name for i in sess.get_inputs()]
        for i in samples:
            values = sess.run(wanted, {k: feeds[i][k] for k in inputs})
            for k, v in enumerate(values):
                results[f"m{m}__s{i}__{k}"] = np.asarray(v)
    np.savez(base / "outputs.npz", **results)
    (base / "outputs.json").write_text(json.dumps({"names": names, "samples": len(samples)}))


def run_optimize(job, base):
    for m, model in enumerate(job["models"]):
        so = _options(job)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(base / f"optimized{m}.onnx")
        ort.InferenceSession(str(base / model), so, providers=["CPUExecutionProvider"])


def main(argv):
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    {"outputs": run_outputs, "optimize": run_optimize}[job["kind"]](job, job_path.parent)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # the host shows this last line to the user
        print(f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}", file=sys.stderr)
        sys.exit(1)
