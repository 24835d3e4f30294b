"""Which JAX backends to start: no libtpu probe on a machine without a TPU.

With libtpu installed (the `tpu` extra, which the tests and the preflight use), JAX tries the TPU
backend first on every start. On a CPU or GPU host that attempt fails, harmlessly, after libtpu
has printed five lines of errors ("Failed to find host bounds for accelerator type", "unexpected
worker hostname", a source location trace) that read like a broken install. So when nobody chose
the platforms and no TPU chip is on the PCI bus, JAX is told to start the backends the machine
has. A `JAX_PLATFORMS` or `jax_platforms` the user set always wins, and a TPU VM is left as it is.
The preflight's compile-only TPU client loads libtpu by itself and is not affected.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

PCI_DEVICES = "/sys/bus/pci/devices"  # where JAX itself looks for TPU chips
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips; any Google device counts, to stay on the safe side
_NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")  # JAX's own probe
_CUDA_PLUGINS = ("jax_plugins.xla_cuda12", "jax_cuda12_plugin")


def has_tpu_chip() -> bool:
    for vendor in glob.glob(os.path.join(PCI_DEVICES, "*", "vendor")):
        try:
            if Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return False


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def platforms_without_tpu() -> str | None:
    """The backends to start on this host, or None to leave JAX's own choice (ROCm hosts)."""
    if any(os.path.exists(d) for d in _NVIDIA_DEVICES):
        return "cuda,cpu" if any(_installed(p) for p in _CUDA_PLUGINS) else "cpu"
    if os.path.exists("/dev/kfd"):
        return None
    return "cpu"


def _user_chose() -> bool:
    if os.environ.get("JAX_PLATFORMS"):
        return True
    jax = sys.modules.get("jax")
    if jax is None:
        return False
    from jax._src import xla_bridge

    # Too late to choose once a backend runs; and a value set in jax.config is the user's.
    return bool(jax.config.jax_platforms) or xla_bridge.backends_are_initialized()


def skip_tpu_probe_without_tpu() -> str | None:
    """Chooses the backends when libtpu is installed, no TPU is here and nobody chose; returns
    the choice (None when nothing was changed). Call before anything starts a JAX backend."""
    if _user_chose() or not _installed("libtpu") or has_tpu_chip():
        return None
    platforms = platforms_without_tpu()
    if platforms is None:
        return None
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", platforms)
    else:
        os.environ["JAX_PLATFORMS"] = platforms  # read when jax is imported; children inherit it
    return platforms
