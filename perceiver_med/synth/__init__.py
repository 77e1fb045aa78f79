"""Phantom data sets written as real DICOM / NIfTI / PNG files: knee radiographs and chest CTs (phantoms),
chest CTs with several labelled nodules and a LUNA16-style points CSV (nodules)."""
