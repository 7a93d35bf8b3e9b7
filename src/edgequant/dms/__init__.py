"""Driver-monitoring (DMS) models from MediaPipe, converted to ONNX, with real data and metrics.

Build the cache with ``python -m edgequant.dms.build`` and run one frame end to end with
``python -m edgequant.dms.frame_pipeline --models-dir .cache/dms/models``.
"""
