"""Post-training algorithms on the ONNX graph (each with one entry point, each describing itself
in one line for the report). ``ranges``: activation ranges robust to outlying calibration samples.
``histogram``: percentile/entropy/distribution ranges from streaming histograms (fixed memory).
Equalization, bias correction, range search, SmoothQuant and learned rounding plug in here."""
