"""kmpray benchmarks: each measures a figure and its same-run baseline, writing JSON."""
