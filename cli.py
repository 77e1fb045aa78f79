"""Run the perceiver-med command line from a checkout: `python cli.py --help`."""
from perceiver_med.cli import main

main()
