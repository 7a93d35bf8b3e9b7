"""A corpus of bad inputs: each ends in exactly one `edgequant: error:` line on stderr, a non-zero
exit, and none of onnxruntime's tracebacks or log blocks (captured at the file-descriptor level,
where native code writes), and nothing written where it should not be."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_models
from edgequant.cli import main

LEAKS = ("Traceback", "[E:onnxruntime", "[W:onnxruntime", "onnxruntime.capi", "EP Error", "Falling back")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    good = onnx_models.save(onnx_models.matmul_net(), d / "mlp.onnx")
    conv = onnx_models.save(onnx_models.conv_net(opset=13, channels=8, size=8), d / "conv.onnx")
    data = good.read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "text.onnx").write_text("this is not a model\n")
    (d / "folder.onnx").mkdir()
    custom = helper.make_model(helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    onnx.save(custom, d / "custom.onnx")
    badconv = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [numpy_helper.from_array(np.zeros((4, 5, 3, 3), np.float32), "W")]),
        opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(badconv, d / "badconv.onnx")
    for name, location in (("extmissing", "weights.bin"), ("extoutside", "../outside.bin")):
        m = onnx_models.matmul_net()
        init = m.graph.initializer[0]
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        init.external_data.add(key="location", value=location)
        init.ClearField("raw_data")
        init.ClearField("float_data")
        onnx.save(m, d / f"{name}.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (4, 64)).astype(np.float32)
    np.savez(d / "ok.npz", x=x)
    np.savez(d / "wrongname.npz", nope=x)
    np.savez(d / "wrongshape.npz", x=rng.normal(0, 1, (4, 65)).astype(np.float32))
    np.savez(d / "strings.npz", x=np.array([["a"] * 64] * 4))
    np.savez(d / "nan.npz", x=np.where(np.arange(256).reshape(4, 64) == 7, np.nan, x).astype(np.float32))
    np.savez(d / "empty.npz")
    with open(d / "pickled.npy", "wb") as f:
        np.save(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (d / "pickle.pkl").write_bytes(pickle.dumps({"x": x}))
    (d / "emptydir").mkdir()
    (d / "fleet_missing.yaml").write_text("models:\n  - {name: a, model: nope.onnx, calib: ok.npz}\n")
    (d / "fleet_syntax.yaml").write_text("models: [ {name: a, model: mlp.onnx\n")
    (d / "fleet_key.yaml").write_text("models:\n  - {name: a, model: mlp.onnx, calib: ok.npz, calibb: 3}\n")
    (d / "fleet_device.yaml").write_text("models:\n  - {name: a, model: mlp.onnx, calib: ok.npz, device: 'no such'}\n")
    (d / "existing.onnx").write_bytes(data)
    assert conv.is_file()
    return d


CASES = {
    "missing model": "inspect {d}/nope.onnx",
    "empty model": "inspect {d}/empty.onnx",
    "truncated model": "quantize {d}/truncated.onnx -o {out}/q.onnx --mode dynamic",
    "random bytes": "bench {d}/random.onnx",
    "text file": "eval {d}/text.onnx --data {d}/ok.npz",
    "a folder as model": "inspect {d}/folder.onnx",
    "custom op": "quantize {d}/custom.onnx -o {out}/q.onnx --mode dynamic",
    "custom op in run": "run {d}/custom.onnx --calib {d}/ok.npz -o {out}/r",
    "inconsistent conv": "bench {d}/badconv.onnx --runs 3 --warmup 0",
    "external data missing": "quantize {d}/extmissing.onnx -o {out}/q.onnx --mode dynamic",
    "external data outside": "inspect {d}/extoutside.onnx",
    "wrong input name": "quantize {d}/mlp.onnx -o {out}/q.onnx --mode static --calib {d}/wrongname.npz",
    "wrong shape": "eval {d}/mlp.onnx --data {d}/wrongshape.npz",
    "strings as data": "eval {d}/mlp.onnx --data {d}/strings.npz",
    "nan in data": "quantize {d}/mlp.onnx -o {out}/q.onnx --mode static --calib {d}/nan.npz",
    "empty npz": "eval {d}/mlp.onnx --data {d}/empty.npz",
    "pickled npy": "eval {d}/mlp.onnx --data {d}/pickled.npy",
    "pickle file": "eval {d}/mlp.onnx --data {d}/pickle.pkl",
    "empty folder as data": "eval {d}/mlp.onnx --data {d}/emptydir",
    "random:0": "eval {d}/mlp.onnx --data random:0",
    "output is the input": "quantize {d}/mlp.onnx -o {d}/mlp.onnx --mode dynamic",
    "output exists": "quantize {d}/mlp.onnx -o {d}/existing.onnx --mode dynamic",
    "unknown target": "quantize {d}/mlp.onnx -o {out}/q.onnx --mode dynamic --target riscv",
    "op type typo": "quantize {d}/mlp.onnx -o {out}/q.onnx --mode dynamic --op-types MatMull",
    "exclude typo": "quantize {d}/mlp.onnx -o {out}/q.onnx --mode dynamic --exclude nosuchnode",
    "static without calib": "quantize {d}/mlp.onnx -o {out}/q.onnx --mode static",
    "qnn needs static shapes": "quantize {d}/conv.onnx -o {out}/q.onnx --mode static --target qnn --calib random:4",
    "missing metric module": "eval {d}/mlp.onnx --data {d}/ok.npz --metric nosuchmodule:fn",
    "unknown metric": "eval {d}/mlp.onnx --data {d}/ok.npz --metric top7",
    "reference of another model": "eval {d}/mlp.onnx --data {d}/ok.npz --reference {d}/conv.onnx",
    "too few runs": "bench {d}/mlp.onnx --runs 1",
    "unknown device": "run {d}/mlp.onnx --calib {d}/ok.npz -o {out}/r --device board9",
    "fleet: missing model": "fleet {d}/fleet_missing.yaml -o {out}/f",
    "fleet: yaml syntax": "fleet {d}/fleet_syntax.yaml -o {out}/f",
    "fleet: unknown key": "fleet {d}/fleet_key.yaml -o {out}/f",
    "fleet: bad device": "fleet {d}/fleet_device.yaml -o {out}/f",
    "missing fleet file": "fleet {d}/nope.yaml -o {out}/f",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clean_error_line(case: str, corpus: Path, tmp_path: Path, capfd) -> None:
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    argv = CASES[case].format(d=corpus, out=tmp_path).split()
    code = main(argv)
    out, err = capfd.readouterr()
    assert code != 0, (case, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("edgequant: error:")]
    assert len(errors) >= 1, (case, err)
    assert not any(leak in out + err for leak in LEAKS), (case, out + err)
    assert after_unchanged(corpus, before), case            # inputs never touched
    assert not list(tmp_path.rglob(".*.tmp")), case         # no partial files


def after_unchanged(corpus: Path, before: dict) -> bool:
    now = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    return all(now.get(p) == t for p, t in before.items())


def test_full_disk_is_one_line_naming_the_file(corpus: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    """ENOSPC anywhere (here: while the quantizer writes) -> "no space left on device writing PATH"."""
    import edgequant.api as api_mod

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "q.onnx"))

    monkeypatch.setattr("edgequant.quantize.quantize_model", full)
    monkeypatch.setattr(api_mod, "quantize_model", full, raising=False)
    code = main(["quantize", str(corpus / "mlp.onnx"), "-o", str(tmp_path / "q.onnx"), "--mode", "dynamic"])
    err = capfd.readouterr().err
    assert code != 0 and f"no space left on device writing {tmp_path / 'q.onnx'}" in err and "Traceback" not in err


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    from edgequant.errors import EdgequantError
    from edgequant.fsutil import write_text_atomic

    target = tmp_path / "report.json"
    target.write_text("old")

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.replace", no_space)
    with pytest.raises(EdgequantError, match="no space left on device"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_ctrl_c_is_one_line_and_exit_130(corpus: Path, tmp_path: Path, capfd, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("edgequant.quantize.quantize_model", interrupted)
    monkeypatch.setattr("edgequant.api.quantize_model", interrupted, raising=False)
    code = main(["quantize", str(corpus / "mlp.onnx"), "-o", str(tmp_path / "q.onnx"), "--mode", "dynamic"])
    err = capfd.readouterr().err
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "q.onnx").exists()


def test_a_successful_quantize_prints_no_onnxruntime_log_lines(tmp_path: Path, capfd) -> None:
    """onnxruntime's pre-processing and calibration sessions warn at its default level (an unused
    initializer folded away: real exports have them); none of it reaches the user's terminal."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W4"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "W4"), w, unused])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(src))
    code = main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--mode", "static", "--calib", "random:4"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert not any(leak in out + err for leak in LEAKS), out + err
