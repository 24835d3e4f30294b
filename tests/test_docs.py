"""The README and docs/ stay true: every page is linked, every link resolves, every command
they name runs and parses, and every config field and repository path they name exists
(the checker: tests/docs_pages.py).
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterator

import pytest
from docs_pages import (
    DOCS,
    LINK,
    README,
    collected,
    command_problems,
    commands,
    field_problems,
    help_argv,
    help_problem,
    link_problems,
    pages,
    path_problems,
    rel,
    run,
    snippets,
    subprocess_jobs,
)


@pytest.fixture(scope="module")
def subprocess_runs() -> Iterator[dict[tuple[str, ...], concurrent.futures.Future]]:
    """Every --help and launcher --dry_run, started at once and run while other tests do."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    yield {argv: pool.submit(run, argv) for argv in subprocess_jobs()}
    pool.shutdown(cancel_futures=True)


def test_every_page_is_linked_from_the_readme_and_every_link_resolves():
    readme_links = {(README.parent / m.group(1).partition("#")[0]).resolve()
                    for m in LINK.finditer(README.read_text())}
    problems = [f"README.md: no link to {rel(p)}" for p in pages()[1:] if p not in readme_links]
    for page in pages():
        problems += link_problems(page, page.read_text())
    assert not problems, "\n".join(problems)


def test_every_command_parses_with_its_entry_points_parser(subprocess_runs):
    cmds, problems, _ = collected()
    assert cmds, "no commands found in the pages"
    problems = [*problems, *command_problems(cmds)]
    assert not problems, "\n".join(problems)


def test_every_config_field_named_exists():
    problems = []
    for page in pages():
        problems += field_problems(rel(page), page.read_text())
    assert not problems, "\n".join(problems)


def test_every_repository_path_in_code_exists():
    problems = path_problems(collected()[2])
    assert not problems, "\n".join(problems)


def test_every_entry_point_runs_with_help_and_launchers_dry_run(subprocess_runs):
    problems = []
    for argv, job in subprocess_jobs().items():
        done = subprocess_runs[argv].result()
        if job.help_of is not None:
            problem = help_problem(job.help_of.kind, job.help_of.entry, done)
        else:
            problem = done.returncode and f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
        if problem:
            shown = " ".join("python" if a == sys.executable else a for a in argv)
            problems.append(f"{', '.join(job.wheres[:3])}: `{shown}`: {problem}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- the checker fails


FAKE_PAGE = """# A page with mistakes

See [the missing page](no-such-page.md) and [a heading](pipeline.md#no-such-heading).

```bash
python -m mypt_jax.prepare --input a.jsonl --output_dir d --no_such_flag 1
python -m mypt_jax.train --config=configs/no_such_preset.py
python -m mypt_jax.train --config=configs/cpu_tiny.py --config.no_such_field=1
python -m mypt_jax.pipeline --phase all --set no_such_setting=3
python benchmarks/bench_phase.py --dataset d --config.batch_size=many
```

Set `config.learning_rat` with `python -m mypt_jax.generate --model m --temprature 0`, read
`mypt_jax/no_such_module.py`.
"""


def test_the_checks_find_a_fake_pages_mistakes():
    page = DOCS / "fake.md"
    snips = snippets("docs/fake.md", FAKE_PAGE)
    cmds, problems = commands(snips)
    problems += command_problems(cmds) + link_problems(page, FAKE_PAGE)
    problems += field_problems("docs/fake.md", FAKE_PAGE) + path_problems(snips)
    report = "\n".join(problems)
    expected = [
        "docs/fake.md:3: link no-such-page.md: no-such-page.md does not exist",
        "docs/fake.md:3: link pipeline.md#no-such-heading: no heading #no-such-heading",
        "docs/fake.md:6: `python -m mypt_jax.prepare", "unrecognized arguments: --no_such_flag 1",
        "docs/fake.md:7: `python -m mypt_jax.train --config=configs/no_such_preset.py`",
        "docs/fake.md:8: `python -m mypt_jax.train", "--config.no_such_field=1",
        "docs/fake.md:9: --set no_such_setting=: no_such_setting is not a field",
        "docs/fake.md:10: `python benchmarks/bench_phase.py", "expected an integer",
        "docs/fake.md:13: config.learning_rat: learning_rat is not a field",
        "docs/fake.md:13: `python -m mypt_jax.generate", "--temprature",
        "docs/fake.md:14: mypt_jax/no_such_module.py does not exist",
    ]
    missing = [e for e in expected if e not in report]
    assert not missing, f"not reported: {missing}\nreported:\n{report}"
    # Nothing else: lines 7, 8 and 13 are each caught by two checks (path or field, and parse).
    assert len(problems) == 12, report
    done = run(help_argv("module", "mypt_jax.no_such_module"))
    assert help_problem("module", "mypt_jax.no_such_module", done).startswith("exit 1")
