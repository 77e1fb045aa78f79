"""A finished run: its directory (files, config, weights and their checks, the fold ensemble) and the
predictor that turns samples into calibrated decisions for every command that needs them; and an exported
model (onnx_model: its metadata, and the predictor that runs it in ONNX Runtime without the model code)."""
