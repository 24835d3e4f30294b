"""Data: the tokenizer and chat format, prepare (JSONL -> episode files), the loader, batch shaping.

`python -m mypt_jax.data inspect` is `inspect.py`.
"""
