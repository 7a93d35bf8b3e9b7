"""Data sources: every source kind, the sample-shape rule, labels, and every user error."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgequant.data import DataSource, Preprocess, Sample, open_source, stack_feeds
from edgequant.errors import EdgequantError
from edgequant.model import TensorSpec

F32 = np.dtype("float32")


def spec(name: str, shape: tuple, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, np.dtype(dtype), tuple(shape))


X = spec("x", ("batch", 3, 4, 4))


def rows(n: int, shape=(3, 4, 4), dtype="float32", seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(EdgequantError) as info:
        result = fn(*args, **kwargs)
        if isinstance(result, DataSource):
            list(result)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- stacked .npz / .npy ------------------------------------------------------------------------

def test_npz_rank_r_streams_arr_i_slices_with_labels(tmp_path: Path) -> None:
    data, labels = rows(5), np.arange(5) * 10
    np.savez(tmp_path / "c.npz", x=data, labels=labels)
    src = open_source(tmp_path / "c.npz", [X])
    assert (len(src), src.count, src.has_labels, src.synthetic) == (5, 5, True, False)
    samples = list(src)
    assert all(isinstance(s, Sample) for s in samples)
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(s.feeds["x"], data[i:i + 1])
        assert s.feeds["x"].dtype == F32 and s.feeds["x"].flags.c_contiguous
        assert int(s.label) == labels[i]
        assert s.origin == f"{tmp_path / 'c.npz'}[{i}]"
    assert [s.origin for s in src] == [s.origin for s in samples]  # re-iterable


def test_npz_rank_r_plus_1_is_samples_by_full_input_and_compressed_streams(tmp_path: Path) -> None:
    data = rows(4, (2, 3, 4, 4))  # each sample a batch of 2
    np.savez_compressed(tmp_path / "c.npz", x=data)
    got = [s.feeds["x"] for s in open_source(tmp_path / "c.npz", [X])]
    assert len(got) == 4 and all(g.shape == (2, 3, 4, 4) for g in got)
    np.testing.assert_array_equal(np.stack(got), data)


def test_npy_memmapped_single_input_and_limit(tmp_path: Path) -> None:
    data = rows(6)
    np.save(tmp_path / "c.npy", data)
    src = open_source(str(tmp_path / "c.npy"), [X], limit=3)
    got = list(src)
    assert len(src) == 3 and len(got) == 3 and not src.has_labels
    np.testing.assert_array_equal(got[2].feeds["x"], data[2:3])
    assert type(got[0].feeds["x"]) is np.ndarray  # a copy, never a view into the file map


def test_static_batch_of_one_accepts_stacked_samples(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", rows(3))
    got = list(open_source(tmp_path / "c.npy", [spec("x", (1, 3, 4, 4))]))
    assert [g.feeds["x"].shape for g in got] == [(1, 3, 4, 4)] * 3


def test_dynamic_dims_are_filled_from_data_and_symbols_must_agree(tmp_path: Path) -> None:
    ids, mask = spec("ids", ("b", "seq"), "int64"), spec("mask", ("b", "seq"), "int64")
    np.savez(tmp_path / "ok.npz", ids=np.ones((3, 7), np.int64), mask=np.ones((3, 7), np.int64))
    assert [s.feeds["ids"].shape for s in open_source(tmp_path / "ok.npz", [ids, mask])] == [(1, 7)] * 3
    np.savez(tmp_path / "bad.npz", ids=np.ones((3, 7), np.int64), mask=np.ones((3, 5), np.int64))
    msg = error(open_source, tmp_path / "bad.npz", [ids, mask])
    assert "bad.npz" in msg and "dim 'seq' is 7 in input 'ids' but 5 in input 'mask'" in msg


def test_multi_input_npz_and_int_casts(tmp_path: Path) -> None:
    a, b = spec("a", ("n", 2)), spec("b", ("n",), "int32")
    np.savez(tmp_path / "c.npz", a=rows(4, (2,), "float64"), b=np.arange(4, dtype=np.int64))
    src = open_source(tmp_path / "c.npz", [a, b])
    got = list(src)
    assert got[3].feeds["a"].dtype == F32 and got[3].feeds["b"].dtype == np.int32
    assert got[3].feeds["b"].tolist() == [3]
    assert any("float64, cast to float32" in n for n in src.notes)


def test_int_narrowing_out_of_range_names_sample(tmp_path: Path) -> None:
    b = spec("b", ("n",), "int8")
    np.savez(tmp_path / "c.npz", b=np.array([1, 2, 300], np.int64))
    msg = error(open_source, tmp_path / "c.npz", [b])
    assert "c.npz: sample 2 of input 'b' has values outside the int8 range" in msg


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_and_inf_are_detected_while_streaming_with_sample_index(tmp_path: Path, bad, word) -> None:
    data = rows(20)
    data[17, 1, 2, 3] = bad
    np.savez(tmp_path / "calib.npz", x=data)
    src = open_source(tmp_path / "calib.npz", [X])  # opening reads headers only: no error yet
    it = iter(src)
    for _ in range(17):
        next(it)
    with pytest.raises(EdgequantError, match=rf"calib\.npz: sample 17 of input 'x' contains {word}$"):
        next(it)


def test_float16_overflow_is_reported(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.full((2, 3, 4, 4), 1e6))
    msg = error(open_source, tmp_path / "c.npy", [spec("x", ("b", 3, 4, 4), "float16")])
    assert "sample 0 of input 'x' overflows float16" in msg


# --- validation errors at open time -----------------------------------------------------------

def test_missing_input_lists_what_the_file_has(tmp_path: Path) -> None:
    np.savez(tmp_path / "calib.npz", x=rows(2), labels=np.arange(2))
    msg = error(open_source, tmp_path / "calib.npz", [spec("images", ("b", 3, 4, 4))])
    assert "calib.npz: no array for model input 'images' (file has: x, labels)" in msg


def test_unknown_extra_array_is_an_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=rows(2), lables=np.arange(2))
    assert "c.npz: array 'lables' matches no model input" in error(open_source, tmp_path / "c.npz", [X])


def test_int_vs_float_mismatch_is_an_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 4, 4), np.uint8))
    msg = error(open_source, tmp_path / "c.npz", [X])
    assert "c.npz" in msg and "uint8 but model input 'x' is float32" in msg


def test_static_dim_mismatch_names_the_dim(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", rows(2, (3, 5, 4)))
    msg = error(open_source, tmp_path / "c.npy", [X])
    assert "c.npy" in msg and "(dim 2: 5 != 4)" in msg


@pytest.mark.parametrize("shape", [(2, 4, 4), (2, 1, 1, 3, 4, 4)])
def test_wrong_rank_is_an_error(tmp_path: Path, shape) -> None:
    np.save(tmp_path / "c.npy", np.zeros(shape, np.float32))
    msg = error(open_source, tmp_path / "c.npy", [X])
    assert "c.npy" in msg and "does not fit model input 'x' [batch,3,4,4]" in msg


def test_rank_r_needs_a_batch_like_first_dim(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", rows(3, (4,)))  # rank 2 for a rank-2 input whose first dim is 3
    msg = error(open_source, tmp_path / "c.npy", [spec("x", (3, 4))])
    assert "does not fit model input 'x' [3,4]" in msg


def test_sample_counts_must_agree(tmp_path: Path) -> None:
    a, b = spec("a", ("n", 2)), spec("b", ("n", 2))
    np.savez(tmp_path / "c.npz", a=rows(3, (2,)), b=rows(4, (2,)))
    assert "different sample counts ('a': 3, 'b': 4)" in error(open_source, tmp_path / "c.npz", [a, b])
    np.savez(tmp_path / "d.npz", a=rows(3, (2,)), b=rows(3, (2,)), labels=np.arange(2))
    assert "'labels' has 2 entries but the inputs have 3 samples" in error(open_source, tmp_path / "d.npz", [a, b])


def test_npy_for_a_multi_input_model_is_an_error(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", rows(2, (2,)))
    msg = error(open_source, tmp_path / "c.npy", [spec("a", ("n", 2)), spec("b", ("n", 2))])
    assert "c.npy: a .npy holds one array but the model has 2 inputs (a, b)" in msg


def test_empty_array_is_an_error(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.zeros((0, 3, 4, 4), np.float32))
    assert "c.npy: contains no samples" in error(open_source, tmp_path / "c.npy", [X])


# --- security and corrupt files ----------------------------------------------------------------

def test_object_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert error(open_source, tmp_path / "x.npy", [X]) == f"{tmp_path / 'x.npy'}: contains Python objects (pickle); refusing to load"


def test_raw_pickle_named_npy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(pickle.dumps(rows(2)))
    assert "x.npy: contains Python objects (pickle); refusing to load" in error(open_source, tmp_path / "x.npy", [X])


def test_object_array_inside_npz_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=np.array([object()] * 2, dtype=object))
    msg = error(open_source, tmp_path / "c.npz", [X])
    assert "c.npz: array 'x': contains Python objects (pickle); refusing to load" in msg


@pytest.mark.parametrize("name, content, expect", [
    ("c.npy", b"hello world, not numpy", "not a .npy array"),
    ("c.npy", b"", "empty"),
    ("c.npz", b"PK\x03\x04garbage", "not a valid .npz file"),
    ("c.npz", b"not a zip at all", "not a valid .npz file"),
])
def test_corrupt_files_give_one_line_errors(tmp_path: Path, name, content, expect) -> None:
    (tmp_path / name).write_bytes(content)
    msg = error(open_source, tmp_path / name, [X])
    assert name in msg and expect in msg


def test_truncated_npy_is_caught_from_the_header(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", rows(4))
    raw = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "c.npy").write_bytes(raw[:-10])
    assert "c.npy: truncated" in error(open_source, tmp_path / "c.npy", [X])


def test_corrupt_npz_member_data_fails_while_streaming_with_a_clear_error(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "c.npz", x=rows(2000))
    raw = bytearray((tmp_path / "c.npz").read_bytes())
    for k in range(len(raw) - 6000, len(raw) - 5000):  # damage data far past the .npy header
        raw[k] ^= 0xFF
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    src = open_source(tmp_path / "c.npz", [X])  # headers are intact
    with pytest.raises(EdgequantError, match=r"c\.npz: corrupt or truncated while reading sample \d+ \("):
        list(src)


def test_missing_path_empty_folder_and_unusable_folder(tmp_path: Path) -> None:
    assert error(open_source, tmp_path / "nope.npz", [X]) == f"{tmp_path / 'nope.npz'}: no such file or folder"
    (tmp_path / "empty").mkdir()
    assert "empty: folder has no usable files" in error(open_source, tmp_path / "empty", [X])
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "readme.txt").write_text("hi")
    assert "txt: folder has no usable files" in error(open_source, tmp_path / "txt", [X])
    (tmp_path / "c.csv").write_text("1,2")
    assert "c.csv: unsupported data source" in error(open_source, tmp_path / "c.csv", [X])


def test_bad_limit_and_no_inputs(tmp_path: Path) -> None:
    assert "limit must be a positive integer" in error(open_source, "random:3", [X], limit=0)
    assert "no inputs" in error(open_source, "random:3", [])


# --- folder of per-sample arrays ---------------------------------------------------------------

def test_array_folder_sorted_mixed_ranks_and_labels(tmp_path: Path) -> None:
    d = tmp_path / "samples"
    d.mkdir()
    data = rows(3)
    np.savez(d / "s2.npz", x=data[2], label=np.int64(7))        # rank R-1: batch dim added
    np.savez(d / "s0.npz", x=data[0:1], labels=np.array([5]))   # rank R: as is
    np.savez(d / "s1.npz", x=data[1], label=np.int64(6))
    (d / "notes.txt").write_text("ignored")
    src = open_source(d, [X])
    got = list(src)
    assert len(src) == 3 and src.has_labels
    assert [Path(s.origin).name for s in got] == ["s0.npz", "s1.npz", "s2.npz"]
    for i, s in enumerate(got):
        np.testing.assert_array_equal(s.feeds["x"], data[i:i + 1])
    assert [int(np.ravel(s.label)[0]) for s in got] == [5, 6, 7]


def test_array_folder_of_npy_files(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i}.npy", rows(1, seed=i)[0].astype(np.float64))
    got = list(open_source(d, [X], limit=2))
    assert len(got) == 2 and got[1].feeds["x"].shape == (1, 3, 4, 4) and got[1].label is None


def test_array_folder_errors_name_the_file(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    np.savez(d / "a.npz", x=rows(1)[0], label=np.int64(1))
    np.savez(d / "b.npz", x=rows(1)[0])
    assert "b.npz: has no 'labels'/'label' array but a.npz has one" in error(open_source, d, [X])
    np.savez(d / "b.npz", y=rows(1)[0])
    assert "b.npz: no array for model input 'x' (file has: y)" in error(open_source, d, [X])
    np.savez(d / "b.npz", x=rows(1, (3, 4, 5))[0])
    assert "b.npz" in error(open_source, d, [X])
    (d / "b.npz").unlink()
    np.save(d / "b.npy", rows(1)[0])
    msg = error(open_source, d, [spec("x", ("n", 3, 4, 4)), spec("y", ("n", 2))])
    assert "a.npz: no array for model input 'y'" in msg


def test_nan_in_a_folder_sample_names_that_file(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    bad = rows(1)[0]
    bad[0, 0, 0] = np.nan
    np.save(d / "a.npy", rows(1)[0])
    np.save(d / "b.npy", bad)
    assert error(open_source, d, [X]).endswith("b.npy: sample 1 of input 'x' contains NaN")


# --- random:N ----------------------------------------------------------------------------------

def test_random_is_deterministic_typed_and_notes_guessed_dims() -> None:
    inputs = [spec("x", ("batch", 3, "h", "h")), spec("input_ids", ("batch", "seq"), "int64"),
              spec("attention_mask", ("batch", "seq"), "int64"), spec("flag", (2,), "bool")]
    a, b = open_source("random:4", inputs, seed=3), open_source("random:4", inputs, seed=3)
    assert a.synthetic and not a.has_labels and len(a) == 4
    sa, sb = list(a), list(b)
    for p, q in zip(sa, sb):
        for k in p.feeds:
            np.testing.assert_array_equal(p.feeds[k], q.feeds[k])
    first = sa[0].feeds
    assert first["x"].shape == (1, 3, 128, 128) and first["x"].dtype == F32
    assert first["input_ids"].shape == (1, 128) and first["input_ids"].dtype == np.int64
    assert set(np.unique(first["input_ids"])) <= {0, 1}
    assert (first["attention_mask"] == 1).all()
    assert first["flag"].dtype == np.bool_
    assert not np.array_equal(sa[0].feeds["x"], sa[1].feeds["x"])
    other = next(iter(open_source("random:4", inputs, seed=4))).feeds["x"]
    assert not np.array_equal(other, first["x"])
    assert any("batch" in n and "set to 1" in n for n in a.notes)
    assert any("'seq'" not in n and "seq" in n and "set to 128" in n for n in a.notes)
    assert len(open_source("random:10", inputs, limit=2)) == 2


@pytest.mark.parametrize("bad", ["random", "random:", "random:0", "random:x", "random:-3"])
def test_random_spec_errors(bad: str) -> None:
    assert "expected random:N" in error(open_source, bad, [X])


# --- helpers -----------------------------------------------------------------------------------

def test_stack_feeds_batches_dynamic_inputs_only(tmp_path: Path) -> None:
    data = rows(5)
    np.save(tmp_path / "c.npy", data)
    stacked = stack_feeds(open_source(tmp_path / "c.npy", [X]), 3)
    np.testing.assert_array_equal(stacked["x"], data[:3])
    fixed = open_source(tmp_path / "c.npy", [spec("x", (1, 3, 4, 4))])
    assert "fixed first dim" in error(stack_feeds, fixed, 3)
    assert stack_feeds(fixed, 1)["x"].shape == (1, 3, 4, 4)


def test_npz_member_header_only_validation_does_not_read_data(tmp_path: Path) -> None:
    # A huge declared array with a truncated body is rejected from the zip directory sizes alone.
    np.savez(tmp_path / "c.npz", x=rows(3))
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        body = zf.read("x.npy")
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as zf:
        zf.writestr("x.npy", body[:-40])
    assert "t.npz: array 'x' is truncated" in error(open_source, tmp_path / "t.npz", [X])


def test_scalar_input_from_a_vector_of_samples(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", t=np.array([0.5, 1.5, 2.5]))
    got = [s.feeds["t"] for s in open_source(tmp_path / "c.npz", [spec("t", ())])]
    assert [g.shape for g in got] == [()] * 3 and [float(g) for g in got] == [0.5, 1.5, 2.5]


def test_preprocess_given_for_arrays_is_noted_not_fatal(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", rows(2))
    src = open_source(tmp_path / "c.npy", [X], preprocess=Preprocess(size=4))
    assert any("preprocessing spec ignored" in n for n in src.notes)
