"""`cli.py audit`: measure how noisy a preference dataset is, and split it into consistent and
conflicting pairs. Modules: read (inputs, units), stage (scoring actor), analyse (agreement figures),
export (subsets in the input's schema), report (report.html), run (the driver), sample (demo data)."""
