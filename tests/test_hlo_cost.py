"""HBM bytes read from compiled HLO: loops over all iterations, slices, in-place updates,
on-chip buffers, and agreement between a scanned and an unrolled compile."""

import jax
import jax.numpy as jnp
import pytest

from mypt_jax.preflight import hlo_cost

# A 4-iteration loop whose body reads one [8,128] f32 layer of a stacked [4,8,128] weight
# (through a nested fusion), multiplies it into a [16,8] activation held on chip, and
# writes the [16,128] result into slot i of a [4,16,128] stack in place. After the loop, an
# all-reduce, a Pallas kernel reading the whole weight and a scratch buffer, a dynamic slice,
# a prefetch of the whole stack and of one slice into on-chip memory, and a negate.
_HLO = """HloModule m, entry_computation_layout={()->()}

%slice_layer (p0: f32[4,8,128], p1: s32[]) -> f32[8,128] {
  %p0 = f32[4,8,128]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  %ds = f32[1,8,128]{2,1,0} dynamic-slice(%p0, %p1, %zero, %zero), dynamic_slice_sizes={1,8,128}
  ROOT %b = f32[8,128]{1,0} bitcast(%ds)
}

%matmul_fusion (x: f32[16,8], w: f32[4,8,128], i: s32[]) -> f32[16,128] {
  %x = f32[16,8]{1,0} parameter(0)
  %w = f32[4,8,128]{2,1,0} parameter(1)
  %i = s32[] parameter(2)
  %layer = f32[8,128]{1,0} fusion(%w, %i), kind=kLoop, calls=%slice_layer
  ROOT %dot = f32[16,128]{1,0} dot(%x, %layer), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%store (buf: f32[4,16,128], y: f32[16,128], i: s32[]) -> f32[4,16,128] {
  %buf = f32[4,16,128]{2,1,0} parameter(0)
  %y = f32[16,128]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %y3 = f32[1,16,128]{2,1,0} bitcast(%y)
  %zero = s32[] constant(0)
  %same = f32[4,16,128]{2,1,0} bitcast(%buf)
  ROOT %dus = f32[4,16,128]{2,1,0} dynamic-update-slice(%same, %y3, %i, %zero, %zero)
}

%body (state: (s32[], f32[16,8], f32[4,8,128], f32[4,16,128])) -> (s32[], f32[16,8], f32[4,8,128], f32[4,16,128]) {
  %state = (s32[], f32[16,8]{1,0:S(1)}, f32[4,8,128]{2,1,0}, f32[4,16,128]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %x = f32[16,8]{1,0:S(1)} get-tuple-element(%state), index=1
  %w = f32[4,8,128]{2,1,0} get-tuple-element(%state), index=2
  %buf = f32[4,16,128]{2,1,0} get-tuple-element(%state), index=3
  %y = f32[16,128]{1,0} fusion(%x, %w, %i), kind=kOutput, calls=%matmul_fusion
  %out = f32[4,16,128]{2,1,0} fusion(%buf, %y, %i), kind=kLoop, calls=%store
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[16,8]{1,0:S(1)}, f32[4,8,128]{2,1,0}, f32[4,16,128]{2,1,0}) tuple(%next, %x, %w, %out)
}

%cond (state: (s32[], f32[16,8], f32[4,8,128], f32[4,16,128])) -> pred[] {
  %state = (s32[], f32[16,8]{1,0:S(1)}, f32[4,8,128]{2,1,0}, f32[4,16,128]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[16,8], w: f32[4,8,128], buf: f32[4,16,128]) -> f32[4,16,128] {
  %x = f32[16,8]{1,0:S(1)} parameter(0)
  %w = f32[4,8,128]{2,1,0} parameter(1)
  %buf = f32[4,16,128]{2,1,0} parameter(2)
  %zero = s32[] constant(0)
  %init = (s32[], f32[16,8]{1,0:S(1)}, f32[4,8,128]{2,1,0}, f32[4,16,128]{2,1,0}) tuple(%zero, %x, %w, %buf)
  %loop = (s32[], f32[16,8]{1,0:S(1)}, f32[4,8,128]{2,1,0}, f32[4,16,128]{2,1,0}) while(%init), condition=%cond, body=%body
  %stack = f32[4,16,128]{2,1,0} get-tuple-element(%loop), index=3
  %sum = f32[4,16,128]{2,1,0} all-reduce(%stack), replica_groups={}, to_apply=%add
  %scratch = f32[4096]{0} custom-call(), custom_call_target="AllocateBuffer"
  %kernel = f32[16,128]{1,0} custom-call(%w, %scratch), custom_call_target="tpu_custom_call"
  %first = f32[1,16,128]{2,1,0} dynamic-slice(%sum, %zero, %zero, %zero), dynamic_slice_sizes={1,16,128}
  %pre = (f32[4,16,128]{2,1,0}, f32[4,16,128]{2,1,0:S(1)}, u32[]{:S(2)}) copy-start(%sum)
  %pre.done = f32[4,16,128]{2,1,0:S(1)} copy-done(%pre)
  %part = ((f32[4,16,128]{2,1,0}), f32[1,16,128]{2,1,0:S(1)}, s32[]{:S(2)}) slice-start(%sum), slice={[0:1], [0:16], [0:128]}
  %part.done = f32[1,16,128]{2,1,0:S(1)} slice-done(%part)
  ROOT %neg = f32[4,16,128]{2,1,0} negate(%sum)
}
"""


def test_hand_written_module():
    b = hlo_cost.hbm_bytes(_HLO)
    layer, out = 8 * 128 * 4, 16 * 128 * 4
    # Per iteration the matmul reads one layer and the counter (the activation is on chip)
    # and writes its output; the store reads the output and the counter and writes the
    # update in place; the counter add moves 3 scalars.
    assert b.unknown_loops == 0
    assert b.matmul == 4 * (layer + 4 + out) + (4 * layer + 4096 * 4 + out)  # + the kernel
    # After the loop: a dynamic slice reads and writes one [16,128] slice; the negate.
    assert b.other == 4 * ((out + 4 + out) + 3 * 4) + 2 * out + 2 * 4 * out
    assert b.collective == 2 * 4 * out
    assert b.async_copy == 4 * out + out  # the HBM side of each prefetch, once
    assert b.total == b.matmul + b.async_copy + b.collective + b.other
    assert b.overlapped == b.matmul + b.async_copy
    # Over the links: the all-reduce's input twice (no group given: the whole of it).
    assert b.link_sync == 2 * 4 * out and b.link_async == 0


# Collectives as TPU's compiler writes them: a reduce-scatter as an all-reduce in an
# `all-reduce-scatter` fusion (synchronous), an all-gather started asynchronously and waited
# for later, an all-gather carried by an async collective fusion beside a matmul, its done
# fusion (nothing more moves), and a collective-permute pair. Groups of 4 devices.
_COLLECTIVES = """HloModule c, entry_computation_layout={()->()}

%all-reduce-scatter.1 (g: bf16[1024,256]) -> bf16[256,256] {
  %g = bf16[1024,256]{1,0} parameter(0)
  %r = bf16[1024,256]{1,0} all-reduce(%g), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %s = bf16[256,256]{1,0} slice(%r), slice={[0:256], [0:256]}
}

%gather (w: bf16[256,256]) -> bf16[1024,256] {
  %w = bf16[256,256]{1,0} parameter(0)
  ROOT %ag = bf16[1024,256]{1,0} all-gather(%w), replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0'}, dimensions={0}
}

%async_collective_fusion.7 (x: bf16[8,256], w: bf16[256,256], v: bf16[256,256]) -> (bf16[8,256], bf16[1024,256]) {
  %x = bf16[8,256]{1,0} parameter(0)
  %w = bf16[256,256]{1,0} parameter(1)
  %v = bf16[256,256]{1,0} parameter(2)
  %dot = bf16[8,256]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ag = bf16[1024,256]{1,0} all-gather(%v), replica_groups=[1,4]<=[4], dimensions={0}
  ROOT %t = (bf16[8,256]{1,0}, bf16[1024,256]{1,0}) tuple(%dot, %ag)
}

ENTRY %main (g: bf16[1024,256], w: bf16[256,256], x: bf16[8,256]) -> bf16[256,256] {
  %g = bf16[1024,256]{1,0} parameter(0)
  %w = bf16[256,256]{1,0} parameter(1)
  %x = bf16[8,256]{1,0} parameter(2)
  %rs = bf16[256,256]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.1
  %start = ((bf16[256,256]{1,0}), bf16[1024,256]{1,0}) async-start(%w), calls=%gather
  %done = bf16[1024,256]{1,0} async-done(%start)
  %fused = (bf16[8,256]{1,0}, bf16[1024,256]{1,0}) fusion(%x, %w, %w), kind=kOutput, calls=%async_collective_fusion.7
  %async-collective-done.1 = bf16[1024,256]{1,0} fusion(%w), kind=kCustom, calls=%gather
  %cp = (bf16[256,256]{1,0}, bf16[256,256]{1,0}, u32[]{:S(2)}) collective-permute-start(%w), source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  ROOT %cpd = bf16[256,256]{1,0} collective-permute-done(%cp)
}
"""


def test_collectives_count_as_the_compiler_scheduled_them():
    b = hlo_cost.hbm_bytes(_COLLECTIVES)
    full, shard = 1024 * 256 * 2, 256 * 256 * 2
    # Synchronous: the reduce-scatter sends 3/4 of its input.
    assert b.link_sync == pytest.approx(0.75 * full)
    # Asynchronous, each once: the started all-gather and the fused one receive 3/4 of
    # their output; the permute sends its output; the done fusion adds nothing.
    assert b.link_async == pytest.approx(0.75 * full + 0.75 * full + shard)
    # The link bytes are not HBM bytes: the fusions' own operands and outputs are.
    assert b.total == b.matmul + b.async_copy + b.collective + b.other
    assert hlo_cost._group_size("replica_groups={{0,1},{2,3}}") == 2
    assert hlo_cost._group_size("replica_groups=mesh['a'=2,'b'=4] {'a','b'}, x") == 8
    assert hlo_cost._group_size("replica_groups=[2,4]<=[8]") == 4
    assert hlo_cost._group_size("channel_id=1") == 1


def test_unreadable_trip_count_counts_once_and_says_so():
    text = _HLO.replace("%n = s32[] constant(4)", "%n = s32[] parameter(1)")
    b = hlo_cost.hbm_bytes(text)
    assert b.unknown_loops == 1
    kernel = 4 * 8 * 128 * 4 + 4096 * 4 + 16 * 128 * 4
    assert b.matmul == 8 * 128 * 4 + 4 + 16 * 128 * 4 + kernel


def test_no_entry_is_an_error():
    with pytest.raises(ValueError, match="ENTRY"):
        hlo_cost.hbm_bytes("HloModule m\n")


def _layers(scan: bool, n: int = 6):
    """n residual layers x @ w[i] -> gelu, scanned or unrolled, with their gradient."""

    def f(w_lcc, x_bc):
        def layer(x, w):
            return x + jax.nn.gelu(x @ w), None

        if scan:
            x_bc, _ = jax.lax.scan(layer, x_bc, w_lcc)
        else:
            for i in range(n):
                x_bc, _ = layer(x_bc, w_lcc[i])
        return jnp.sum(x_bc ** 2)

    w = jax.ShapeDtypeStruct((n, 256, 256), jnp.float32)
    x = jax.ShapeDtypeStruct((512, 256), jnp.float32)
    return jax.jit(jax.value_and_grad(f)).lower(w, x).compile()


def test_scanned_layers_count_every_iteration():
    """XLA's cost analysis counts a scanned body once; the HLO walk counts every layer."""
    totals = {n: hlo_cost.hbm_bytes(_layers(True, n).as_text()) for n in (3, 6, 12)}
    assert all(t.unknown_loops == 0 for t in totals.values())
    per_layer = (totals[6].total - totals[3].total) / 3
    assert per_layer > 0.1 * totals[3].total
    assert totals[12].total - totals[6].total == pytest.approx(6 * per_layer, rel=1e-3)
    xla = _layers(True, 12).cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert totals[12].total > 2 * xla["bytes accessed"]


def test_scanned_and_unrolled_matmuls_move_the_same_bytes():
    # The rest differs for real: a scan saves the GELU's intermediates for its backward,
    # where the unrolled program fuses their recomputation.
    scanned = hlo_cost.hbm_bytes(_layers(True).as_text())
    unrolled = hlo_cost.hbm_bytes(_layers(False).as_text())
    assert scanned.matmul == pytest.approx(unrolled.matmul, rel=0.1)
