"""Interop: the upstream checkpoint format (its key table and torch pickle reader), our model
directory, and the upstream `train.py` command line."""
