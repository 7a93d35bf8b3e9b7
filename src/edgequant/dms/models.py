"""The three MediaPipe DMS models: where they sit in the mediapipe wheel and what they eat."""

from __future__ import annotations

from dataclasses import dataclass

MEDIAPIPE_VERSION = "0.10.21"


@dataclass(frozen=True)
class ModelSpec:
    """One model: file stem, wheel member, square input side, input value range, metric."""

    name: str
    member: str
    size: int
    value_range: tuple[float, float]
    metric: str  # function name in edgequant.dms.metrics

    @property
    def onnx_name(self) -> str:
        return f"{self.name}.onnx"


DETECTOR = ModelSpec("face_detection_short_range",
                     "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                     128, (-1.0, 1.0), "detector_accuracy")
FACE_LANDMARK = ModelSpec("face_landmark", "mediapipe/modules/face_landmark/face_landmark.tflite",
                          192, (0.0, 1.0), "face_landmark_displacement")
IRIS_LANDMARK = ModelSpec("iris_landmark", "mediapipe/modules/iris_landmark/iris_landmark.tflite",
                          64, (0.0, 1.0), "iris_landmark_displacement")
MODELS: tuple[ModelSpec, ...] = (DETECTOR, FACE_LANDMARK, IRIS_LANDMARK)
