"""Tools around runs: the loop benchmark (bench.py, measure.py) and inference with a logged model (predict.py)."""
