from perceiver_med.cli import main

main()
