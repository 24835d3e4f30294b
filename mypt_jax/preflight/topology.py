"""Compile-only TPU and GPU devices for named accelerator slices, on a machine without them.

XLA compiles for a TPU topology through libtpu (the `tpu` extra) and for NVIDIA GPUs through
the CUDA PJRT plugin (the `cuda` extra), without the hardware: the devices these functions
return can carry shardings and `jax.jit(...).lower(...).compile()`, never run anything.

Names follow Cloud TPU accelerator types: for v4 and v5p the number counts TensorCores, two
per chip, and JAX drives each chip as one "megacore" device (v5p-8 = 4 chips = 4 devices);
for v5e and v6e it counts chips (v5e-8 = 8 devices). GPU slices are "<n>xh100" / "<n>xh200"
(SXM parts, one host).

The GPU target is a `stream_executor.GpuTargetConfigProto` in text form written from the
device's published facts (NVIDIA's data sheets and the CUDA programming guide's
compute-capability 9.0 limits), not copied from XLA's spec files.
"""

from __future__ import annotations

import dataclasses
import os

from mypt_jax.parallel import platforms
from mypt_jax.preflight.chips import CHIPS, Chip


class TopologyError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # "v5p-8"
    chip: Chip
    devices: int  # JAX devices
    hosts: int
    libtpu_name: str = ""  # libtpu's "<gen>:<chips shape>" for TPU slices
    chips_per_host: tuple[int, int, int] = (2, 2, 1)  # libtpu host bounds (TPU only)
    megacore: bool = False  # v4 / v5p: one device per chip

    @property
    def platform(self) -> str:
        return self.chip.platform


def _tpu(name, chip, devices, hosts, libtpu_name, chips_per_host, megacore=False) -> Topology:
    return Topology(name, CHIPS[chip], devices, hosts, libtpu_name, chips_per_host, megacore)


# libtpu names checked with libtpu 0.0.42.1: "v5litepod" is refused, "v5e" accepted.
TOPOLOGIES: dict[str, Topology] = {t.name: t for t in (
    _tpu("v4-8", "v4", 4, 1, "v4:2x2x1", (2, 2, 1), megacore=True),
    _tpu("v4-16", "v4", 8, 2, "v4:2x2x2", (2, 2, 1), megacore=True),
    _tpu("v5e-4", "v5e", 4, 1, "v5e:2x2", (2, 2, 1)),
    _tpu("v5e-8", "v5e", 8, 1, "v5e:2x4", (2, 4, 1)),
    _tpu("v5p-8", "v5p", 4, 1, "v5p:2x2x1", (2, 2, 1), megacore=True),
    _tpu("v5p-32", "v5p", 16, 4, "v5p:2x2x4", (2, 2, 1), megacore=True),
    _tpu("v6e-4", "v6e", 4, 1, "v6e:2x2", (2, 2, 1)),
    _tpu("v6e-8", "v6e", 8, 1, "v6e:2x4", (2, 4, 1)),
    Topology("1xh100", CHIPS["h100"], 1, 1),
    Topology("8xh100", CHIPS["h100"], 8, 1),
    Topology("1xh200", CHIPS["h200"], 1, 1),
    Topology("8xh200", CHIPS["h200"], 8, 1),
)}


def get(name: str) -> Topology:
    try:
        return TOPOLOGIES[name.lower()]
    except KeyError:
        raise TopologyError(
            f"--topology {name!r}: unknown; expected one of {sorted(TOPOLOGIES)}") from None


# ----------------------------------------------------------------------------------------
# GPU target description
# ----------------------------------------------------------------------------------------

# Per SXM device: (SMs, memory as nvidia-smi reports it (81559 and 143771 MiB), bandwidth
# bytes/s, boost GHz, the device_kind string). Both are compute capability 9.0 (Hopper)
# with a 50 MB L2.
_GPU_FACTS = {
    "h100": (132, 81559 * 2**20, 3.35e12, 1.98, "NVIDIA H100 80GB HBM3"),
    "h200": (132, 143771 * 2**20, 4.8e12, 1.98, "NVIDIA H200"),
}


def gpu_target_config(chip: Chip) -> str:
    """The GpuTargetConfigProto text XLA compiles against for a compile-only `chip`."""
    if chip.name not in _GPU_FACTS:
        raise TopologyError(f"no GPU target description for {chip.name}")
    sms, memory, bandwidth, ghz, kind = _GPU_FACTS[chip.name]
    # Compute capability 9.0 limits (CUDA C++ Programming Guide, "Technical Specifications
    # per Compute Capability"): 1024 threads per block, 2048 per SM, 64K 32-bit registers
    # per SM and per block, 228 KB shared memory per SM of which 227 KB per block opt-in,
    # 48 KB per block by default; 128 FP32 lanes per SM.
    return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(bandwidth)}
  l2_cache_size: 52428800
  clock_rate_ghz: {ghz}
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 patch: 0 }}
device_description_str: "{kind}"
"""


# ----------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------

# launch/gpu.py's DEFAULT_XLA_FLAGS, which every GPU run gets (tests/test_topology.py checks
# that the two agree): GPU programs are compiled with them, as the run will be.
GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
    "--xla_gpu_enable_triton_gemm=false",
)


def prepare_environment(topo: Topology) -> None:
    """Environment for compile-only plugins; call before jax initialises its backends.

    libtpu would probe a GCE metadata server and take an exclusive lock file that any other
    JAX process with libtpu installed may hold; the CUDA plugin would refuse to register
    without CUDA libraries unless JAX is told to run on the CPU. GPU compiles get the launch
    script's XLA flags (XLA reads them once, when the first backend starts).
    """
    import jax

    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if topo.platform == "tpu" and not platforms.has_tpu_chip():
        # Without these libtpu prints five lines of errors about the host it cannot find; the
        # compile-only client takes its topology from the arguments, not from them.
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", topo.name)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_WORKER_ID", "0")
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    if topo.platform == "cuda" and "xla_gpu" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = " ".join((os.environ.get("XLA_FLAGS", ""), *GPU_XLA_FLAGS)).strip()


def compile_only_devices(topo: Topology, slices: int = 1) -> list:
    """The slice's devices (`slices` TPU slices of it, joined over DCN), compile-only; raises
    TopologyError naming the missing extra.

    Devices of several slices carry `slice_index` (the mesh_dcn_* fields need it); ids count
    from 100000 per slice and coords repeat in every slice.
    """
    from jax.experimental import topologies

    if slices < 1 or (slices > 1 and topo.platform != "tpu"):
        raise TopologyError(f"--slices {slices}: expected 1, or more for a TPU topology "
                            f"(--topology {topo.name} is {topo.platform})")
    if topo.platform == "tpu":
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise TopologyError(
                f"--topology {topo.name}: needs libtpu; install the tpu extra "
                "(pip install -e '.[tpu]')") from None
        desc = topologies.get_topology_desc(
            topology_name=topo.libtpu_name, platform="tpu",
            chip_config_name="megacore" if topo.megacore else "default",
            chips_per_host_bounds=topo.chips_per_host, num_slices=slices,
            wrap=(False, False, False))
    else:
        shape = f"1x1x{topo.devices}"
        try:
            desc = topologies.get_topology_desc(
                topology_name=shape, platform="cuda", topology=shape,
                target_config=gpu_target_config(topo.chip))
        except NotImplementedError:
            raise TopologyError(
                f"--topology {topo.name}: needs the CUDA PJRT plugin; install the cuda extra "
                "(pip install -e '.[cuda]') and run with JAX_PLATFORMS=cpu") from None
    devices = list(desc.devices)
    if len(devices) != topo.devices * slices:
        raise TopologyError(
            f"--topology {topo.name}: the compiler gave {len(devices)} devices, expected "
            f"{topo.devices * slices}")
    return devices
