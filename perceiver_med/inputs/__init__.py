"""Inputs: from scans to the exact arrays a model reads.

Owns samples and their splits (splits, points, masks → points), intensity windows, the input kinds (a whole
image, a 3x3 grid of slices, a grid around a point; preprocess), the on-disk cache of prepared inputs, loading
a splits file's inputs with task-aware augmentation (loading), and the library side of `inspect`, `split` and
`preview` (folders). A new input kind goes here.
"""
