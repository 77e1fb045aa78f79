"""Workflows: the library function behind each command that trains or arranges data — a single run (train),
cross-validation over folds (cv), `inspect`/`split`/`preview` (folders) and the demo. Each takes a request
(its settings) and returns what the command prints; the command line only parses and prints."""
