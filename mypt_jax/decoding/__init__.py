"""Decoding: the jitted KV-cache generation loop, prompt fitting, and eval-prompt scoring."""
