"""edgequant: FP32 ONNX -> INT8 that is measured faster and within an accuracy budget on the target."""

__version__ = "0.1.0"
