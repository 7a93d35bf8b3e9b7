"""Post-training algorithms on the ONNX graph (each with one entry point, each describing itself
in one line for the report): ``ranges`` (activation ranges robust to outlying calibration
samples), ``histogram`` (percentile/entropy/distribution ranges from streaming histograms, fixed
memory), ``range_search`` (MSE range per activation), ``equalization`` (cross-layer
equalization), ``smoothquant`` (outlier channels of MatMul/Gemm inputs into the weights; its strength per
activation from ``smoothquant_strength``),
``bias_correction``, and two weight roundings on the quantizer's own grid over ``weight_layers``
(the integer weight layers of QDQ and dynamic models and the Gram statistics of their inputs):
``adaround`` (learned, up or down) and ``gptq`` (error-compensating, one pass)."""
