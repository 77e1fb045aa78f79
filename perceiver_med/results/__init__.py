"""Results: statistics (confusion counts, intervals, calibration, thresholds), metrics per split, console
tables and figures, evidence maps (explain) and the HTML report. A new output format (ONNX, DICOM) goes here
as a module that takes a run and the predictor's output."""
