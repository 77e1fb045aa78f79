"""Results of a finished run, all through run.Predictor: scoring a split (scoring), `evaluate` (evaluation),
`predict` (predictions), `explain` (evidence maps), console tables and figures (display) and the HTML report
(report/), `export --format onnx` (onnx_export). A new output format (DICOM) goes here as a module that takes a run
and the predictor's output."""
