from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.training.evals import health

TAGS = list(Tokenizer().id_by_string)


def _r(name, completion, expected=None, exact=None, stopped_by="stop_token"):
    return {"name": name, "completion": completion, "expected": expected, "exact": exact,
            "normalized": exact, "stopped_by": stopped_by}


def test_loss_stuck_needs_three_high_flat_evals():
    assert health.loss_stuck([(0, 10.8), (100, 10.79), (200, 10.78)])
    assert not health.loss_stuck([(0, 10.8), (100, 10.79)])
    assert not health.loss_stuck([(0, 10.8), (100, 10.5), (200, 10.2)])  # still dropping
    assert not health.loss_stuck([(0, 10.8), (100, 10.79), (200, 3.0)])


def test_malformed_tags():
    ok = [_r("a", "OK."), _r("b", "Hello.</myPT_assistant>", stopped_by="length")]
    assert health.malformed_tags(ok, TAGS) is None
    bad = health.malformed_tags([_r("a", "OK.<myPT_user>Hi"), _r("b", "no end", stopped_by="length")], TAGS)
    assert "a: contains <myPT_user>" in bad and "b: never closes" in bad


def test_same_output_for_every_prompt():
    assert health.same_output([_r("a", "Yes."), _r("b", "Yes.")])
    assert not health.same_output([_r("a", "Yes."), _r("b", "No.")])
    assert not health.same_output([_r("a", "Yes.")])


def test_simple_tasks_failing_only_after_the_grace_steps():
    results = [_r("a", "No.", "OK.", False), _r("b", "x", "Hello.", False)]
    assert health.simple_tasks_failing(results, step=500, after_step=500) == (
        "0/2 simple prompts answered correctly at step 500")
    assert health.simple_tasks_failing(results, step=400, after_step=500) is None
    results[0]["exact"] = True
    assert health.simple_tasks_failing(results, step=500, after_step=500) is None


def test_check_collects_findings():
    found = health.check([(0, 10.9), (1, 10.9), (2, 10.9)], [_r("a", "."), _r("b", ".")],
                         step=2, tag_strings=TAGS, simple_prompts_after=0)
    assert len(found) == 2
