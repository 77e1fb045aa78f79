"""`perceiver-med report`: a run directory as one self-contained HTML page and its Markdown twin.

Reading the run (run_record), the partitions (flow, headers), figures, the CLAIM 2024 appendix and the two
renderers (document) are separate; build.py puts them together and writes the files.
"""
from perceiver_med.results.report.build import write_report

__all__ = ["write_report"]
