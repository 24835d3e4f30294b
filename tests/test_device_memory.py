"""Reading XLA's memory accounting and deciding whether a program fits."""

import types

import pytest

from mypt_jax.parallel import device_memory as dm

GIB = 2**30


def fake_compiled(arguments=0, outputs=0, aliased=0, temp=0, code=0):
    stats = types.SimpleNamespace(
        argument_size_in_bytes=arguments, output_size_in_bytes=outputs,
        alias_size_in_bytes=aliased, temp_size_in_bytes=temp, generated_code_size_in_bytes=code)
    return types.SimpleNamespace(memory_analysis=lambda: stats)


def test_required_counts_a_donated_output_once():
    r = dm.from_compiled(fake_compiled(arguments=10, outputs=10, aliased=9, temp=5, code=1),
                         resident=3)
    assert r.required == 10 + 10 - 9 + 5 + 1 + 3
    assert r.to_dict()["required"] == r.required


def test_check():
    r = dm.MemoryReport(arguments=2 * GIB, outputs=0, aliased=0, temporaries=10 * GIB, code=0)
    assert dm.check(r, 16 * GIB, "the step") is None
    problem = dm.check(r, 8 * GIB, "the step")
    assert "the step needs 12.00 GiB" in problem and "10.00 GiB temporaries" in problem
    assert "8.00 GiB" in problem
    assert dm.check(r, None, "x") is None and dm.check(None, GIB, "x") is None


def test_backends_without_analysis_give_none():
    assert dm.from_compiled(types.SimpleNamespace(memory_analysis=lambda: None)) is None

    def boom():
        raise NotImplementedError

    assert dm.from_compiled(types.SimpleNamespace(memory_analysis=boom)) is None


@pytest.mark.parametrize("message, expected", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
     "temporaries (41.41G) exceeds available HBM (15.75G).", (41.41, 15.75)),
    ("XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 33.27G of "
     "30.75G hbm. Exceeded hbm capacity by 2.52G.", (33.27, 30.75)),
])  # fmt: skip
def test_parse_oom(message, expected):
    need, have = dm.parse_oom(message)
    assert need == pytest.approx(expected[0] * GIB, rel=1e-6)
    assert have == pytest.approx(expected[1] * GIB, rel=1e-6)
    assert dm.is_oom(RuntimeError(message))


def test_other_errors_are_not_oom():
    assert dm.parse_oom("INVALID_ARGUMENT: bad shapes") is None
    assert not dm.is_oom(ValueError("INVALID_ARGUMENT: bad shapes"))


def test_device_capacity():
    assert dm.device_capacity(types.SimpleNamespace(memory_stats=lambda: None)) is None
    dev = types.SimpleNamespace(memory_stats=lambda: {"bytes_limit": 5 * GIB, "bytes_in_use": 1})
    assert dm.device_capacity(dev) == 5 * GIB
