"""`cli.py eval`: base vs candidates on the same prompts and seeds (docs/eval.md)."""
