"""perceiver-med: folders of medical scans -> trained, explainable classifiers.

The packages follow the data, one direction only:

    io/        files -> ScanImage (readers: DICOM, NIfTI, PNG; a new reader goes here)
    inputs/    samples, splits, points, windows, input kinds, cache (a new input kind goes here)
    models/    layers and the model families, their registry (a new model goes here)
    training/  run settings, the engine, a run, cross-validation
    run/       a finished run directory and its predictor (samples -> calibrated decisions)
    results/   statistics, metrics, tables, figures, explain, report (a new output format goes here)
    synth/     phantom data sets
    cli.py     the command line: parse, call one library function, print

Shared by all: errors (the user's mistakes), files (safe writes, locks), csvfiles (every CSV read or written).
"""
__version__ = "0.1.0"
