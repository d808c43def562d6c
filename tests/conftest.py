"""What the test files share: the kernel path every test process computes on, the ways to call the package (in this
process, or as a user's command in its own process), and the smoke runs that several files read, each built once.

Every test process computes on the kernel path the package's commands pin (chapter 07c), before any test module
imports torch: a run trained here and one trained by `python -m moe_study` or a study's notebook agree bit for bit.

`make test` runs pytest on every core (pytest-xdist, `--dist loadgroup`). A fixture that trains is session-scoped (each
worker builds it at most once, and never twice because another file's test came between); the tests that read one of
the larger ones carry its `xdist_group`, so that one worker builds it and the other keeps to the rest of the suite."""
from moe_study.environment import pin_kernels

pin_kernels()

import contextlib, hashlib, io, json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

from moe_study.__main__ import main, parse_overrides
from moe_study.studies import study_to_dict, study_with

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent              # the venv running the tests: papermill, torchrun, nbdev's commands
PAPERMILL = BIN / 'papermill'
TINY = ['max_steps=6', 'eval_every=3', 'checkpoint_every=3', 'log_every=1', 'sample_tokens=0']
TINY_SET = [a for kv in TINY for a in ('--set', kv)]
TINY_STUDY = study_with('smoke', overrides=parse_overrides(TINY))       # a refusal or a fault needs no more training


def cli(*argv) -> tuple[int, str, str]:
    "The command line in this process: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def in_process(*args) -> subprocess.CompletedProcess:
    "`cli` with `command`'s answer: what `python -m moe_study ARGS` exits with and prints, without a process of its own."
    code, out, err = cli(*args)
    return subprocess.CompletedProcess(['python', '-m', 'moe_study', *map(str, args)], code, out, err)


def command(*args, root: Path | None = None, env: dict | None = None, cwd=ROOT, **kw) -> subprocess.CompletedProcess:
    """`python -m moe_study ARGS` in a process of its own, as a user runs it, from the repository root (`cwd`);
    `root`: its MOE_STUDY_ROOT; `env`: its whole environment (default: this process's)."""
    env = {**(os.environ if env is None else env), **({'MOE_STUDY_ROOT': str(root)} if root else {})}
    return subprocess.run([sys.executable, '-m', 'moe_study', *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env, **kw)


def snapshot(folder: Path) -> dict:
    "Every file under `folder` (the lock file aside) with the SHA-256 of its bytes."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob('*')) if p.is_file() and p.name != '.lock'}


def no_traceback(err: str) -> None:
    assert 'Traceback' not in err, err


def stories(n: int) -> list[str]:
    "`n` generated stories (not the smoke study's own): a user's corpus."
    from moe_study.stories import synthetic_stories
    return synthetic_stories(3, 60, 'train', 0, n)


def _refuse(constant): raise ValueError(f"{constant} is not JSON (strict parsers such as JSON.parse and jq refuse it)")


def load_json_strict(path) -> object:
    "A JSON file read as a strict parser reads it: a bare NaN, Infinity or -Infinity is an error."
    return json.loads(Path(path).read_text(), parse_constant=_refuse)


def section_headings(page: str) -> list[str]:
    "The text of each <h2> of a rendered report, in order: its sections as a reader meets them."
    from html.parser import HTMLParser

    class Headings(HTMLParser):
        def __init__(self):
            super().__init__(); self.found, self.inside = [], False
        def handle_starttag(self, tag, attrs):
            if tag == 'h2': self.inside = True; self.found.append('')
            elif tag == 'a' and self.inside: self.inside = 'anchor'        # nbconvert's ¶ link
        def handle_endtag(self, tag):
            if tag == 'h2': self.inside = False
            elif tag == 'a' and self.inside == 'anchor': self.inside = True
        def handle_data(self, data):
            if self.inside is True: self.found[-1] += data

    p = Headings(); p.feed(page)
    return [h.strip() for h in p.found]


# --- runs several files read, each trained once per worker (copy one before changing it) -------------------------

@pytest.fixture(scope='session')
def half_run(tmp_path_factory):
    "A tiny smoke MoE run stopped after its step-3 checkpoint (of 6): runs/<study>/moe/seed0."
    runs = tmp_path_factory.mktemp('half')
    code, _, err = cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', runs, '--until', 3, '--quiet', *TINY_SET)
    assert code == 0, err
    return runs / TINY_STUDY.name / 'moe' / 'seed0'


@pytest.fixture
def run_copy(half_run, tmp_path):
    "A private copy of the half-finished run: (runs dir, run dir)."
    runs = tmp_path / 'runs'
    shutil.copytree(half_run.parents[2], runs)
    return runs, runs / TINY_STUDY.name / 'moe' / 'seed0'


def resume(runs, *extra):
    "Train the half-finished run in `runs` on (to its end, or as `extra` says)."
    return cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', runs, '--quiet', *TINY_SET, *extra)


@pytest.fixture(scope='session')
def reported(tmp_path_factory):
    """The tiny smoke study declared in a user's file as `mine`, its finished MoE run and its rendered report:
    (study file, runs dir, report dir, report folder). Read it; copy what a test changes."""
    folder = tmp_path_factory.mktemp('reported')
    d = study_to_dict(TINY_STUDY); d.update(name='mine', base=None, overrides={})
    study = folder / 'mine.json'
    study.write_text(json.dumps(d))
    code, _, err = cli('study', '--preset', study, '--variants', 'moe', '--seeds', '0', '--runs-dir', folder / 'runs',
                       '--report-dir', folder / 'report')
    assert code == 0, err
    return study, folder / 'runs', folder / 'report', folder / 'report' / 'mine'


@pytest.fixture
def reported_copy(reported, tmp_path):
    "A private copy of `reported`, for a test that changes its runs or its report."
    study, runs, report, _ = reported
    shutil.copytree(runs, tmp_path / 'runs'); shutil.copytree(report, tmp_path / 'report')
    return study, tmp_path / 'runs', tmp_path / 'report', tmp_path / 'report' / 'mine'


# --- scheduling: the long work first, so that the short tests fill the other core at the end --------------------------

def pytest_collection_modifyitems(config, items):
    """Tests that share a trained fixture (an `xdist_group`) and tests marked `long` go first, each kind in file order;
    pytest-xdist hands work out in this order, so no worker is left with a long test while the other idles."""
    def rank(item):
        return 0 if item.get_closest_marker('xdist_group') else 1 if item.get_closest_marker('long') else 2
    items.sort(key=rank)            # stable: file order within each rank, the same on every worker
