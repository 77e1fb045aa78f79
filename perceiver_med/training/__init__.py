"""Training: run settings (config), the fit/evaluate loops with checkpoints and DDP (engine), a single run
(train) and cross-validation over folds (cv). A new training policy or loss goes here."""
