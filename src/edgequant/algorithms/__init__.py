"""Post-training algorithms on the ONNX graph (each with one entry point, each describing itself
in one line for the report). ``ranges``: activation ranges robust to outlying calibration samples.
Equalization, bias correction, range search, SmoothQuant and learned rounding plug in here."""
