import pytest

from mypt_jax.parallel.sharding import logical_to_spec, resolve_mesh_shape


@pytest.mark.parametrize(
    "sizes, devices, expected",
    [((-1, 1, 1), 8, (8, 1, 1)), ((2, 2, 2), 8, (2, 2, 2)), ((1, -1, 2), 8, (1, 4, 2)),
     ((1, 1, 1), 1, (1, 1, 1))],
)  # fmt: skip
def test_resolve_mesh_shape(sizes, devices, expected):
    assert resolve_mesh_shape(sizes, devices) == expected


@pytest.mark.parametrize(
    "sizes, devices, message",
    [((3, -1, 1), 8, "not divisible"), ((2, 2, 1), 8, "use 4 devices"),
     ((-1, -1, 1), 8, "at most one"), ((0, 1, 1), 8, ">= 1"), ((2, 2), 4, "needs 3")],
)  # fmt: skip
def test_bad_mesh_shapes(sizes, devices, message):
    with pytest.raises(ValueError, match=message):
        resolve_mesh_shape(sizes, devices)


def test_logical_rules_never_reuse_a_mesh_axis():
    assert tuple(logical_to_spec(("batch", "seq"))) == (("data", "fsdp"), None)
    assert tuple(logical_to_spec(("embed", "heads"))) == ("fsdp", "tensor")
    # batch already uses fsdp, so embed is replicated rather than sharded twice.
    assert tuple(logical_to_spec(("batch", "seq", "embed"))) == (("data", "fsdp"), None, None)
    assert tuple(logical_to_spec(("layers", None, "vocab"))) == (None, None, "tensor")


def test_activations_split_rows_over_both_batch_axes_and_never_width_over_fsdp():
    assert tuple(logical_to_spec(("act_batch", "act_seq", "act_embed"))) == (
        ("data", "fsdp"), None, None)


def test_constrain_is_the_identity_without_a_mesh_and_keeps_values_with_one():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mypt_jax.parallel.sharding import constrain, make_mesh

    x = jnp.arange(24.0).reshape(2, 3, 4)
    assert constrain(x, ("act_batch", "act_seq", "act_embed"), None) is x
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    y = jax.jit(lambda a: constrain(a * 2, ("act_batch", "act_seq", "act_embed"), mesh))(x)
    np.testing.assert_array_equal(y, x * 2)
