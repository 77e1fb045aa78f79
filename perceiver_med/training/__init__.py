"""Training: all run settings as dataclasses with one JSON form and their checks (config), and the fit and
evaluation loops with checkpoints, bf16 autocast and DDP (engine). A new training policy or loss goes here;
where its files go is the caller's business (run.RunDir.fit_files)."""
