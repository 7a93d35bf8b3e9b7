"""Image-folder sources and the Preprocess spec: exact pixel math, layouts, labels, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgequant.data import Preprocess, open_source
from edgequant.errors import EdgequantError
from edgequant.model import TensorSpec

RED = (255, 0, 0)


def spec(shape: tuple, dtype: str = "float32", name: str = "images") -> TensorSpec:
    return TensorSpec(name, np.dtype(dtype), tuple(shape))


def solid(path: Path, color=RED, size=(10, 6)) -> Path:  # size is PIL (width, height)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(EdgequantError) as info:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__"):
            list(result)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- pixel math ------------------------------------------------------------------------------

@pytest.mark.parametrize("color, layout, shape, channel_axis", [
    ("rgb", "nchw", (1, 3, 8, 6), 1), ("bgr", "nchw", (1, 3, 8, 6), 1), ("rgb", "nhwc", (1, 8, 6, 3), 3)])
def test_color_order_and_layout(tmp_path: Path, color, layout, shape, channel_axis) -> None:
    solid(tmp_path / "imgs" / "a.png")
    pp = Preprocess(size=(8, 6), color=color, layout=layout)
    x = next(iter(open_source(tmp_path / "imgs", [spec(("n", *shape[1:]))], preprocess=pp))).feeds["images"]
    assert x.shape == shape and x.dtype == np.float32
    per_channel = np.moveaxis(x[0], channel_axis - 1, -1).reshape(-1, 3).mean(axis=0)
    expected = [1.0, 0.0, 0.0] if color == "rgb" else [0.0, 0.0, 1.0]
    np.testing.assert_allclose(per_channel, expected, atol=1e-6)


def test_scale_mean_std_per_channel(tmp_path: Path) -> None:
    solid(tmp_path / "a.png", color=(255, 128, 0))
    pp = Preprocess.parse("size=4x4,mean=0.5,0.25,0,std=0.5,0.25,2")
    x = next(iter(open_source(tmp_path / "a.png", [spec((1, 3, 4, 4))], preprocess=pp))).feeds["images"]
    expected = [(1.0 - 0.5) / 0.5, (128 / 255 - 0.25) / 0.25, 0.0]
    np.testing.assert_allclose(x[0].reshape(3, -1).mean(axis=1), expected, rtol=1e-5)


def test_gray_rank3_input_without_batch_dim(tmp_path: Path) -> None:
    solid(tmp_path / "a.png", color=(255, 255, 255))
    pp = Preprocess(size=(5, 5), color="gray", scale=1.0, mean=(128.0,), std=(127.0,))
    x = next(iter(open_source(tmp_path / "a.png", [spec((1, 5, 5))], preprocess=pp))).feeds["images"]
    assert x.shape == (1, 5, 5)
    np.testing.assert_allclose(x, 1.0)


def test_letterbox_pads_and_keeps_aspect(tmp_path: Path) -> None:
    solid(tmp_path / "a.png", color=(255, 255, 255), size=(8, 4))  # wide: 8 wide, 4 high
    pp = Preprocess(size=(8, 8), resize="letterbox", scale=1.0, pad=114)
    x = next(iter(open_source(tmp_path / "a.png", [spec((1, 3, 8, 8))], preprocess=pp))).feeds["images"][0, 0]
    np.testing.assert_array_equal(x[:2], 114)
    np.testing.assert_array_equal(x[6:], 114)
    np.testing.assert_array_equal(x[2:6], 255)


def test_center_crop_covers_then_cuts_the_middle(tmp_path: Path) -> None:
    img = np.zeros((8, 16, 3), np.uint8)
    img[:, 8:] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    pp = Preprocess(size=(8, 8), resize="center_crop", scale=1.0)
    x = next(iter(open_source(tmp_path / "a.png", [spec((1, 3, 8, 8))], preprocess=pp))).feeds["images"][0, 0]
    np.testing.assert_array_equal(x[:, :3], 0)
    np.testing.assert_array_equal(x[:, 5:], 255)


def test_center_crop_fraction_like_imagenet(tmp_path: Path) -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    img[4:28, 4:28] = 255  # white square; with crop 0.5 only the white centre remains
    Image.fromarray(img).save(tmp_path / "a.png")
    pp = Preprocess(size=(16, 16), resize="center_crop", crop_fraction=0.5, scale=1.0)
    x = next(iter(open_source(tmp_path / "a.png", [spec((1, 3, 16, 16))], preprocess=pp))).feeds["images"]
    np.testing.assert_array_equal(x, 255)


def test_uint8_model_input_gets_raw_pixels(tmp_path: Path) -> None:
    solid(tmp_path / "a.png", color=(200, 100, 0))
    pp = Preprocess(size=(4, 4), layout="nhwc", scale=1.0)
    x = next(iter(open_source(tmp_path / "a.png", [spec((1, 4, 4, 3), "uint8")], preprocess=pp))).feeds["images"]
    assert x.dtype == np.uint8 and x[0, 0, 0].tolist() == [200, 100, 0]
    msg = error(open_source, tmp_path / "a.png", [spec((1, 4, 4, 3), "uint8")], preprocess=Preprocess(size=(4, 4)))
    assert "is uint8 (raw pixels); use scale=1 with mean=0 and std=1" in msg


def test_jpeg_and_bmp_and_sorted_flat_folder(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    solid(d / "b.jpg")
    solid(d / "a.bmp")
    solid(d / "c.JPEG")
    (d / "notes.txt").write_text("ignored")
    src = open_source(d, [spec(("n", 3, 8, 8))], preprocess=Preprocess(size=(8, 8)))
    assert len(src) == 3 and not src.has_labels
    assert [Path(s.origin).name for s in src] == ["a.bmp", "b.jpg", "c.JPEG"]


# --- labels from class folders -------------------------------------------------------------------

def test_class_folders_are_labeled_by_sorted_name(tmp_path: Path) -> None:
    for cls, n in [("dog", 2), ("cat", 1)]:
        for i in range(n):
            solid(tmp_path / "d" / cls / f"{i}.png")
    src = open_source(tmp_path / "d", [spec((1, 3, 4, 4))], preprocess=Preprocess(size=4), limit=10)
    got = [(Path(s.origin).parent.name, int(s.label)) for s in src]
    assert src.has_labels and got == [("cat", 0), ("dog", 1), ("dog", 1)]


def test_integer_class_folders_use_their_number(tmp_path: Path) -> None:
    for cls in ["10", "2"]:
        solid(tmp_path / "d" / cls / "x.png")
    got = [int(s.label) for s in open_source(tmp_path / "d", [spec((1, 3, 4, 4))], preprocess=Preprocess(size=4))]
    assert got == [2, 10]


# --- errors ------------------------------------------------------------------------------------

def test_image_folder_needs_preprocess(tmp_path: Path) -> None:
    solid(tmp_path / "imgs" / "a.png")
    assert "imgs: images need a preprocessing spec" in error(open_source, tmp_path / "imgs", [spec((1, 3, 4, 4))])


def test_shape_mismatch_suggests_the_layout(tmp_path: Path) -> None:
    solid(tmp_path / "imgs" / "a.png")
    msg = error(open_source, tmp_path / "imgs", [spec((1, 224, 224, 3))], preprocess=Preprocess(size=224))
    assert ("imgs: preprocessing gives [1,3,224,224]" in msg and "model input 'images' is [1,224,224,3]" in msg
            and "try layout=nhwc" in msg)
    msg = error(open_source, tmp_path / "imgs", [spec((1, 3, 224, 224))], preprocess=Preprocess(size=128))
    assert "preprocessing gives [1,3,128,128]" in msg


def test_multi_input_model_and_bad_image(tmp_path: Path) -> None:
    solid(tmp_path / "imgs" / "a.png")
    two = [spec((1, 3, 4, 4)), spec((1, 2), name="im_shape")]
    assert "single-input models only" in error(open_source, tmp_path / "imgs", two, preprocess=Preprocess(size=4))
    (tmp_path / "imgs" / "b.png").write_bytes(b"not a png")
    msg = error(open_source, tmp_path / "imgs", [spec((1, 3, 4, 4))], preprocess=Preprocess(size=4))
    assert "b.png: not a readable image" in msg


def test_truncated_image_fails_while_streaming_naming_it(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    raw = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(raw[: len(raw) // 2])
    msg = error(open_source, tmp_path / "a.png", [spec((1, 3, 4, 4))], preprocess=Preprocess(size=4))
    assert "a.png: cannot decode image" in msg


def test_mixed_layouts_are_refused(tmp_path: Path) -> None:
    solid(tmp_path / "d" / "top.png")
    solid(tmp_path / "d" / "cat" / "x.png")
    assert "both at the top level and in sub-folders" in error(
        open_source, tmp_path / "d", [spec((1, 3, 4, 4))], preprocess=Preprocess(size=4))
    np.save(tmp_path / "d" / "a.npy", np.zeros((1, 3, 4, 4), np.float32))
    assert "both array files and images" in error(open_source, tmp_path / "d", [spec((1, 3, 4, 4))])


# --- Preprocess parsing -----------------------------------------------------------------------------

def test_parse_cli_form() -> None:
    pp = Preprocess.parse("size=128x96,resize=letterbox,color=BGR,layout=nhwc,scale=0.00784,mean=127.5,std=[1,2,3]")
    assert pp == Preprocess(size=(128, 96), resize="letterbox", color="bgr", layout="nhwc", scale=0.00784,
                            mean=(127.5,), std=(1.0, 2.0, 3.0))
    assert Preprocess.parse("size=64").size == (64, 64)
    assert Preprocess.parse("size=64,48").size == (64, 48)


def test_from_mapping_accepts_yaml_types_and_names_where() -> None:
    pp = Preprocess.from_mapping({"size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": 0.5},
                                 where="fleet.yaml: models[0]")
    assert pp.size == (224, 224) and pp.mean == (0.485, 0.456, 0.406) and pp.std == (0.5,)
    with pytest.raises(EdgequantError, match=r"^fleet\.yaml: models\[1\]: unknown preprocess key 'colour'"):
        Preprocess.from_mapping({"size": 8, "colour": "rgb"}, where="fleet.yaml: models[1]")


@pytest.mark.parametrize("mapping, expect", [
    ({"resize": "stretch"}, "needs size"),
    ({"size": "big"}, "must be HEIGHTxWIDTH"),
    ({"size": [0, 4]}, "must be HEIGHTxWIDTH"),
    ({"size": 4, "resize": "zoom"}, "resize='zoom' is not one of stretch, letterbox, center_crop"),
    ({"size": 4, "layout": "chw"}, "layout='chw' is not one of"),
    ({"size": 4, "scale": 0}, "scale=0 must be > 0"),
    ({"size": 4, "scale": "nan"}, "not a finite number"),
    ({"size": 4, "std": [1, 0, 1]}, "std must not contain 0"),
    ({"size": 4, "mean": [1, 2]}, "mean needs 1 or 3 values"),
    ({"size": 4, "color": "gray", "mean": [1, 2, 3]}, "mean needs 1 value for color=gray, got 3"),
    ({"size": 4, "crop_fraction": 1.5}, "crop_fraction=1.5 must be > 0 and <= 1"),
    ({"size": 4, "pad": 300}, "pad=300 must be an integer 0..255"),
])
def test_from_mapping_errors(mapping, expect) -> None:
    msg = error(Preprocess.from_mapping, mapping, where="spec.yaml")
    assert msg.startswith("spec.yaml: ") and expect in msg


def test_parse_errors_name_the_flag() -> None:
    assert error(Preprocess.parse, "224x224").startswith("--preprocess: expected key=value")
    assert "given twice" in error(Preprocess.parse, "size=4,size=5")


def test_parse_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("preprocess:\n  size: 32x16\n  color: gray\n  std: [2]\n")
    assert Preprocess.parse(str(tmp_path / "p.yaml")) == Preprocess(size=(32, 16), color="gray", std=(2.0,))
    (tmp_path / "p.json").write_text(json.dumps({"size": [8, 8], "layout": "nhwc"}))
    assert Preprocess.parse(str(tmp_path / "p.json")).layout == "nhwc"
    (tmp_path / "bad.yaml").write_text("size: [1, 2\n")
    assert error(Preprocess.parse, str(tmp_path / "bad.yaml")).startswith(f"{tmp_path / 'bad.yaml'}: invalid YAML")
    (tmp_path / "typo.yaml").write_text("size: 8\nmaen: 1\n")
    assert error(Preprocess.parse, str(tmp_path / "typo.yaml")).startswith(
        f"{tmp_path / 'typo.yaml'}: unknown preprocess key 'maen'")
    assert "no such preprocess file" in error(Preprocess.parse, str(tmp_path / "missing.yml"))
