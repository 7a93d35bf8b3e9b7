"""Silero VAD (silero-vad wheel: opset 16, an ``If`` on the sample rate, a recurrent state
``[2, batch, 128]``, a scalar int64 ``sr``) on speech synthesized by espeak-ng from docstring
sentences, with silences between utterances.

Every sample is one 512-sample chunk at 16 kHz with the 64 samples before it (576 in all, as
silero_vad's OnnxWrapper feeds it) and the *real* state FP32 carried to that chunk, so the
quantized model is calibrated and judged on the states it meets in streaming. Labels: speech
when the clean synthesized chunk's RMS exceeds 0.01."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgequant.errors import EdgequantError

from . import inputs
from .sources import extract, save_npz
from .spec import Sizes, ZooModel

MEMBER = "silero_vad/data/silero_vad.onnx"
RATE, CHUNK, CONTEXT = 16000, 512, 64


def _stream(sentences: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy signal, clean signal) of utterances separated by 0.2-0.8 s silences."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, s in enumerate(sentences):
        parts.append(np.zeros(int(rng.uniform(0.2, 0.8) * RATE), np.float32))
        voice = inputs.VOICES[(seed + i) % len(inputs.VOICES)]
        parts.append(inputs.speak(s, voice, int(rng.integers(140, 190))) * float(rng.uniform(0.4, 1.0)))
    clean = np.concatenate(parts + [np.zeros(RATE // 2, np.float32)])
    noisy = clean + rng.normal(0, 0.003, clean.shape).astype(np.float32)
    return noisy.clip(-1, 1).astype(np.float32), clean


def _chunks(model: Path, noisy: np.ndarray, clean: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Run FP32 over the stream; keep ``n`` evenly spaced (input, state, sr, label) samples."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, CONTEXT), np.float32)
    sr = np.array(RATE, np.int64)
    xs, states, labels = [], [], []
    for start in range(0, len(noisy) - CHUNK + 1, CHUNK):
        x = np.concatenate([context, noisy[None, start:start + CHUNK]], axis=1)
        xs.append(x)
        states.append(state)
        labels.append(float(np.sqrt(np.mean(clean[start:start + CHUNK] ** 2))) > 0.01)
        _, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        context = x[:, -CONTEXT:]
    if len(xs) < n:
        raise EdgequantError(f"silero_vad: {len(xs)} chunks synthesized, {n} wanted")
    keep = np.linspace(0, len(xs) - 1, n).round().astype(int)
    return {"input": np.stack([xs[i] for i in keep]), "state": np.stack([states[i] for i in keep]),
            "sr": np.full(n, RATE, np.int64), "labels": np.array([labels[i] for i in keep], np.int64)}


def vad_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    sha = extract(wheel, MEMBER, folder / "model.onnx")
    sents = inputs.sentences()
    need = lambda n: max(2, n // 12 + 1)  # ~15 chunks of speech+silence per sentence  # noqa: E731
    calib = _chunks(folder / "model.onnx", *_stream(sents[:need(sizes.calib)], 51), sizes.calib)
    evals = _chunks(folder / "model.onnx", *_stream(sents[300:300 + need(sizes.eval)], 52), sizes.eval)
    calib.pop("labels")
    return {"member": MEMBER, "member_sha256": sha,
            "calib": save_npz(folder / "calib.npz", calib),
            "eval": save_npz(folder / "eval.npz", evals)}


# --- keyword spotting: openWakeWord 0.4.0 (its last wheel that ships the ONNX models) ---------

OWW = "openwakeword/resources/models/"
WAKE_PHRASES = ("hey jarvis", "hey jarvis, what time is it", "okay, hey jarvis", "hey jarvis, lights on")


def _features(folder: Path, wheel: Path, audio: np.ndarray) -> np.ndarray:
    """openWakeWord's front end in FP32: melspectrogram.onnx on int16-scaled audio, x / 10 + 2,
    76-frame windows every 8 frames -> embedding_model.onnx inputs [W, 76, 32, 1]."""
    import onnxruntime as ort

    mel_path = folder / "melspectrogram.onnx"
    extract(wheel, OWW + "melspectrogram.onnx", mel_path)
    mel = ort.InferenceSession(str(mel_path), providers=["CPUExecutionProvider"])
    padded = np.concatenate([np.zeros(RATE, np.float32), audio, np.zeros(RATE // 2, np.float32)])
    spec = mel.run(None, {"input": (padded * 32767)[None].astype(np.float32)})[0].squeeze() / 10 + 2
    return np.stack([spec[i:i + 76] for i in range(0, spec.shape[0] - 75, 8)])[..., None].astype(np.float32)


def _clips(seed: int, n_pos: int, n_neg: int, offset: int) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    sents = inputs.sentences()
    out = []
    for i in range(n_pos):
        voice = inputs.VOICES[(seed + i) % len(inputs.VOICES)]
        out.append((inputs.speak(WAKE_PHRASES[i % len(WAKE_PHRASES)], voice, int(rng.integers(120, 190))), 1))
    for i in range(n_neg):
        voice = inputs.VOICES[(seed + 3 * i) % len(inputs.VOICES)]
        out.append((inputs.speak(sents[offset + i], voice, int(rng.integers(130, 190))), 0))
    return out


def oww_embedding_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    """Speech-embedding CNN: mel windows of wake-phrase and docstring utterances (espeak-ng)."""
    sha = extract(wheel, OWW + "embedding_model.onnx", folder / "model.onnx")

    def split(n: int, seed: int, offset: int) -> np.ndarray:
        wins = np.concatenate([_features(folder, wheel, a) for a, _ in _clips(seed, 4, max(2, n // 16), offset)])
        return wins[np.linspace(0, len(wins) - 1, n).round().astype(int)]

    return {"member": OWW + "embedding_model.onnx", "member_sha256": sha,
            "calib": save_npz(folder / "calib.npz", {"input_1": split(sizes.calib, 61, 0)}),
            "eval": save_npz(folder / "eval.npz", {"input_1": split(sizes.eval, 62, 400)})}


def oww_wakeword_build(spec: ZooModel, folder: Path, wheel: Path, sizes: Sizes) -> dict:
    """'hey jarvis' classifier on 16 embeddings (1.28 s): per clip, the window FP32 scores
    highest; labels 1 for wake-phrase clips, 0 for docstring sentences."""
    import onnxruntime as ort

    sha = extract(wheel, OWW + "hey_jarvis_v0.1.onnx", folder / "model.onnx")
    emb_path = folder / "embedding_model.onnx"
    extract(wheel, OWW + "embedding_model.onnx", emb_path)
    emb = ort.InferenceSession(str(emb_path), providers=["CPUExecutionProvider"])
    kw = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    name = kw.get_inputs()[0].name

    def split(n: int, seed: int, offset: int) -> dict[str, np.ndarray]:
        xs, ys = [], []
        for audio, label in _clips(seed, n // 2, n - n // 2, offset):
            e = emb.run(None, {"input_1": _features(folder, wheel, audio)})[0].reshape(-1, 96)
            wins = [e[i - 16:i] for i in range(16, len(e) + 1)]
            scores = [kw.run(None, {name: w[None]})[0].item() for w in wins]
            xs.append(wins[int(np.argmax(scores))])
            ys.append(label)
        return {name: np.stack(xs).astype(np.float32), "labels": np.array(ys, np.int64)}

    calib = split(sizes.calib, 71, 200)
    calib.pop("labels")
    return {"member": OWW + "hey_jarvis_v0.1.onnx", "member_sha256": sha,
            "calib": save_npz(folder / "calib.npz", calib),
            "eval": save_npz(folder / "eval.npz", split(sizes.eval, 72, 500))}
