"""perceiver-med: folders of medical scans -> trained, explainable classifiers."""
__version__ = "0.1.0"
