"""Linear evaluation entry point: ``python linear_eval/run.py CONFIG [key=value ...]``."""
