"""Statistics on labels and probabilities, with no knowledge of scans, models or runs: confusion counts (one
function for metrics, thresholds and the bootstrap), temperature calibration, threshold rules, intervals
(statistics), the metrics of one split (metrics), and a run's decision rule, temperature then threshold
(decision)."""
