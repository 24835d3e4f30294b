"""Training presets (ml_collections): `python -m mypt_jax.train --config=configs/<name>.py`."""
