"""Interop: the upstream checkpoint format, the torch pickle reader, our model directory, and the
upstream `train.py` command line."""
