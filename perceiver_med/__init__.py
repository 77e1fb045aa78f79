"""perceiver-med: folders of medical scans -> trained, explainable classifiers.

The packages follow the data, one direction only (tests/test_layout.py checks that every import points down):

    io/         files -> ScanImage (readers: DICOM, NIfTI, MetaImage, PNG; a new reader goes here)
    inputs/     samples, splits, points, windows, input kinds, cache, augmentation (a new input kind goes here)
    synth/      phantom data sets (beside inputs: it writes files that io/ reads)
    models/     layers, the model families and their registry, weights files (a new model goes here)
    stats/      numbers from labels and probabilities: confusion counts, calibration, thresholds, intervals
    training/   run settings (config) and the fit loop (engine); knows nothing of run directories
    run/        a run directory (files, lock, weights checks, fold ensemble) and its predictor
    results/    what a finished run reports: scoring, evaluate, predict, explain, tables, figures, the HTML
                report (a new output format — ONNX, DICOM — goes here, built on the predictor)
    workflows/  one library function per command that trains or arranges data: train, cross-validation,
                inspect/split/preview, the demo
    cli.py      the command line: parse, call one library function, print

Shared by all: errors (the user's mistakes), files (safe writes, digests), csvfiles (every CSV read or written),
configs (every config dataclass to and from JSON, checked).
"""
__version__ = "0.1.0"
