"""The jitted train step: loss and gradients, the optimizer, frozen parameters."""
