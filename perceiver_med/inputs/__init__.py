"""Inputs: from scans to the exact arrays a model reads.

Owns the Sample (samples) and where samples come from: a labelled folder (labels), a points file (points; masks
-> points) and a splits file (splits); intensity windows, the input kinds (a whole image, a 3x3 grid of slices, a
grid around a point; kinds, preprocess), the on-disk cache of prepared inputs, loading a splits file's inputs
(loading) and task-aware augmentation (augment). A new input kind goes here.
"""
