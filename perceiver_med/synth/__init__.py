"""Phantom data sets written as real DICOM / NIfTI / MetaImage / PNG files: knee radiographs and chest CTs
(phantoms), chest CTs with several labelled nodules and a LUNA16-style points CSV (nodules), and such chests in the
LUNA25 and LUNA16 benchmarks' own layouts and tables (luna)."""
