"""Hostile inputs, round two (issue #31): for each, the exit status, a message that names the problem and the fix, no
traceback, and what was written before left intact (by SHA-256). Round one is tests/test_faults.py."""
import json, signal, subprocess, sys, time, resource
from pathlib import Path

import pytest

from conftest import ROOT, cli, no_traceback, resume, snapshot
from moe_study.fileio import exclusive
from moe_study.studies import get_preset, study_to_dict

SMOKE = study_to_dict(get_preset('smoke'))


def study_file(tmp_path, d=None, raw: bytes | None = None, name='mine.json') -> Path:
    "A study file in tmp_path: the JSON of `d`, or `raw` bytes."
    p = tmp_path / name
    if raw is not None: p.write_bytes(raw)
    else: p.write_text(json.dumps(d))
    return p


def mine(**changes) -> dict:
    "The smoke study declared under a name of its own, with `changes` to its top-level fields."
    return {**json.loads(json.dumps(SMOKE)), 'name': 'mine', **changes}


def variant(**changes) -> dict:
    "The smoke study's first variant (moe) with `changes`."
    return {**SMOKE['variants'][0], **changes}


def variants(*first) -> list:
    "The smoke study's variants with `first` in place of its first one (moe)."
    return [*first, *SMOKE['variants'][1:]]


# --- 3. a study file of the wrong shape: exit 2 naming the field and what is allowed, nothing written --------------

def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}

BAD_STUDY_FILES = {
    'a list': ([mine()], "the whole file is a list; it must be an object"),
    'model null': (mine(model=None), "model is null; it must be an object of its fields"),
    'model text': (mine(model='big'), "model is text; it must be an object of its fields"),
    'data a list': (mine(data=['corpus.txt']), "data is a list; it must be an object of its fields"),
    'variants an object': (mine(variants={'moe': variant()}), "variants is an object; it must be a list of variant objects"),
    'a variant that is text': (mine(variants=['moe']), "variants[0] is text; it must be a variant object"),
    'seeds a number': (mine(seeds=3), "seeds is a number; it must be a list of integer seeds"),
    'published not pairs': (mine(published={'moe': 1.5}), "published['moe'] is a number; it must be a pair [mean, std]"),
    'published a triple': (mine(published={'moe': [1, 2, 3]}), "published['moe'] is a list; it must be a pair [mean, std]"),
    'variant without description': (mine(variants=variants(_without(variant(), 'description'))),
                                    "variants[0] (moe) has no 'description'; a variant declares name and description"),
    'comparison without meaning': (mine(comparisons=[{'name': 'g', 'a': 'moe', 'b': 'moe'}]),
                                   "comparisons[0] (g) has no 'positive'; a comparison declares name, a, b and positive"),
    'no study name': (_without(mine(), 'name'), "the study has no 'name'; a study declares name, description"),
    'duplicate variant': (mine(variants=variants(variant(), variant())), "'moe' is declared more than once; give each variant a name of its own"),
    'variant overrides a list': (mine(variants=variants(variant(overrides=[1]))), "variants[0].overrides is a list"),
    'variant budget a list': (mine(variants=variants(variant(budget=[1]))), "budget=[1]: must be one of"),
    'tuning text': (mine(tuning='yes'), "tuning is text; it must be null or an object"),
    'variant vocabulary below the tokenizer': (mine(variants=variants(variant(overrides={'vocab_size': 64}))),
                                               "vocab_size=64 differs from the reference's 512"),
    'a name too long for a folder': (mine(name='m' * 300), "must be 1 to 100 letters"),
}


@pytest.mark.parametrize('case', list(BAD_STUDY_FILES))
def test_a_study_file_of_the_wrong_shape_is_refused(case, tmp_path):
    d, message = BAD_STUDY_FILES[case]
    code, _, err = cli('study', '--preset', study_file(tmp_path, d), '--runs-dir', tmp_path / 'runs',
                       '--report-dir', tmp_path / 'report')
    assert code == 2 and message in err and 'mine.json' in err, err
    no_traceback(err)
    named = 2 * len(d['name']) if isinstance(d, dict) and isinstance(d.get('name'), str) else 0   # a name is shown in full
    assert len(err) < 600 + named, f"the message should name the field, not dump the declaration: {err}"
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'report').exists()


@pytest.mark.parametrize('raw, message', [
    (b'[' * 100_000 + b']' * 100_000, "is not JSON that can be read (nested too deeply)"),
    (json.dumps(mine()).encode().replace(b'"mine"', b'"mi\xff\xfene"'), "a study file is UTF-8 JSON"),
    (b'', "is not JSON that can be read"),
])
def test_a_study_file_that_cannot_be_parsed_is_refused(raw, message, tmp_path):
    code, _, err = cli('params', '--preset', study_file(tmp_path, raw=raw))
    assert code == 2 and message in err, err
    no_traceback(err)


def test_a_study_file_named_in_capitals_is_read(tmp_path):
    code, out, err = cli('params', '--preset', study_file(tmp_path, mine(), name='MINE.JSON'))
    assert code == 0 and 'moe' in out, err


# --- 2. reports are swapped in whole, one writer at a time -------------------------------------------------------

def study_process(study, runs, report, preexec_fn=None, **kw):
    return subprocess.Popen([sys.executable, '-m', 'moe_study', 'study', '--preset', str(study), '--variants', 'moe', '--seeds', '0',
                             '--runs-dir', str(runs), '--report-dir', str(report)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn, **kw)


def wait_on_lock(p: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until process `p` waits for a file lock (Linux lists each waiting request in /proc/locks as '-> …'), or it
    ends, or `timeout` passes; whether it is waiting. Without /proc/locks: whether it still runs after 8 seconds."""
    locks = Path('/proc/locks')
    if not locks.exists():
        time.sleep(8); return p.poll() is None
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if any(l.split()[1] == '->' and l.split()[5] == str(p.pid) for l in locks.read_text().splitlines() if len(l.split()) > 5):
            return True
        time.sleep(0.1)
    return False


def test_a_full_disk_while_a_report_re_renders_keeps_the_previous_report(reported_copy):
    study, runs, report, out = reported_copy
    (out / '.rendered').unlink()                                # the next study re-renders the report
    before = snapshot(out)

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)           # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    p = study_process(study, runs, report, small_disk)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and 'File too large; free disk space' in err and 'is kept' in err, err
    no_traceback(err)
    assert snapshot(out) == before, "the previous report changed"
    assert not (out / '.rendering').exists(), "the scratch folder was left behind"


def test_a_second_renderer_waits_for_the_first(reported_copy):
    study, runs, report, out = reported_copy
    (out / '.rendering').mkdir(exist_ok=True); (out / '.rendering' / 'index.html').write_text('half')   # a killed render's
    (out / '.rendered').unlink(missing_ok=True)
    with exclusive(out):                                        # another process is rendering this report
        p = study_process(study, runs, report)
        waiting = wait_on_lock(p)
        assert p.poll() is None and waiting, "the second renderer did not wait for the report folder's lock"
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    page = (out / 'index.html').read_text()
    assert 'What we found' in page and 'half' != page
    json.loads((out / 'report.ipynb').read_text())             # whole, valid JSON
    assert not (out / '.rendering').exists(), "a killed render's scratch folder was not cleaned"


# --- 4. relative paths mean the user's folder, everywhere --------------------------------------------------------

@pytest.mark.long
def test_a_study_started_outside_the_project_uses_the_users_folder(tmp_path):
    "Relative --runs-dir, --report-dir and a study file's data.path, with --set (a changed study, so its runs read study.json)."
    from moe_study.stories import synthetic_stories
    (tmp_path / 'corpus.txt').write_text('\n\n'.join(synthetic_stories(11, 300, 'train', 0, 3000)))
    d = mine(); d['data'].update(source='files', path='corpus.txt', train_docs=None, val_docs=None, val_fraction=0.1)
    study_file(tmp_path, d)
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'study', '--preset', 'mine.json', '--variants', 'moe',
                          '--seeds', '0', '--runs-dir', 'rel', '--report-dir', 'rep', '--set', 'max_steps=4', '--set', 'warmup_steps=1',
                          '--set', 'eval_every=2', '--set', 'sample_tokens=0'], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert '1 run(s) executed' in res.stdout and 'failed' not in res.stdout.replace('0 failed', ''), res.stdout
    name = next((tmp_path / 'rel').iterdir()).name
    assert name.startswith('mine-') and (tmp_path / 'rel' / name / 'moe' / 'seed0' / 'summary.json').exists()
    assert (tmp_path / 'rep' / name / 'index.html').exists() and not (ROOT / 'rel').exists() and not (ROOT / 'rep').exists()
    declared = json.loads((tmp_path / 'rel' / name / 'study.json').read_text())
    assert declared['data']['path'] == str(tmp_path / 'corpus.txt')            # resolved once, before any run


@pytest.mark.parametrize('argv', [
    ['train', '--preset', 'smoke', '--variant', 'moe', '--data', ''],
    ['study', '--preset', 'smoke', '--data', ''],
    ['data', '--preset', 'smoke', '--data', ' '],
    ['eval', '--preset', 'smoke', '--data', ''],
    ['train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', ''],
])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(argv, tmp_path, capsys):
    code, _, err = cli(*argv)
    err += capsys.readouterr().err                              # argparse writes its refusals to the real stderr
    assert code == 2 and 'an empty path (an unset shell variable?)' in err, err
    no_traceback(err)


def test_a_path_for_the_synthetic_source_is_refused_not_ignored(tmp_path):
    code, _, err = cli('params', '--preset', 'smoke', '--set', 'data.path=corpus.txt')
    assert code == 2 and "is not read by source='synthetic'" in err and '--data PATH' in err, err


# --- 5. exit 2 writes nothing, and nothing is left behind ---------------------------------------------------------

REFUSED_RUNS = {
    'context longer than the corpus': (['--set', 'model.context_len=100000'], "less than one window of 100001"),
    'sequence longer than the context': (['--set', 'seq_len=100'], "seq_len=100 exceeds the model's context_len=64"),
    'eval_tokens below one window': (['--set', 'data.eval_tokens=10'], "eval_tokens=10 is less than one validation window of 65"),
    'a batch larger than the data': (['--set', 'batch_size=100000'], "fewer than one batch of 100000"),
}


@pytest.mark.parametrize('command', ['train', 'study'])
@pytest.mark.parametrize('case', list(REFUSED_RUNS))
def test_a_run_that_cannot_fit_its_data_is_refused_before_anything_is_written(case, command, tmp_path):
    extra, message = REFUSED_RUNS[case]
    argv = (['train', '--variant', 'moe', '--quiet'] if command == 'train' else
            ['study', '--variants', 'moe', '--seeds', '0', '--report-dir', tmp_path / 'report'])
    code, _, err = cli(*argv, '--preset', 'smoke', '--runs-dir', tmp_path / 'runs', *extra)
    assert code == 2 and message in err, err
    no_traceback(err)
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'report').exists(), "a refusal left files behind"


def test_a_granularity_that_does_not_divide_the_experts_is_refused_before_anything_is_written(tmp_path):
    code, _, err = cli('study', '--preset', study_file(tmp_path, mine(variants=variants(variant(granularity=3)))),
                       '--runs-dir', tmp_path / 'runs', '--report-dir', tmp_path / 'report')
    assert code == 2 and 'granularity=3 needs an MoE whose d_expert (176) it divides; choose one that does (2, 4, 8' in err, err
    assert not (tmp_path / 'runs').exists()


def dead_process_mark() -> str:
    "The `@<host>-<pid>` of a process of this machine that has exited."
    import platform
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    return f"@{platform.node()}-{int(dead.stdout)}"


def test_scratch_of_a_killed_cache_build_is_cleaned_on_the_next_build(tmp_path):
    from moe_study.data import build_cache
    cache, mark = tmp_path / 'cache', dead_process_mark()
    for left in (f".building-abc{mark}", f".old-abc{mark}"): (cache / left).mkdir(parents=True)
    build_cache(get_preset('smoke').data, 512, cache)
    assert [p.name for p in cache.iterdir() if p.name.startswith('.')] == [], "a killed build's scratch stayed"


def test_scratch_of_a_killed_export_is_cleaned_on_the_next_export(reported, tmp_path):
    pytest.importorskip('transformers')
    _, runs, _, _ = reported
    left = tmp_path / f".hf.exporting{dead_process_mark()}"; left.mkdir()
    code, _, err = cli('export', runs / 'mine' / 'moe' / 'seed0', tmp_path / 'hf')
    assert code == 0 and (tmp_path / 'hf' / 'config.json').exists(), err
    assert not left.exists(), "a killed export's scratch stayed"


# --- 6. results that were silently wrong ---------------------------------------------------------------------------

def test_a_resume_under_changed_code_is_refused_unless_allowed(run_copy, monkeypatch):
    import moe_study.trainer as trainer
    from moe_study.trainer import ALLOW_CODE_CHANGE_ENV
    runs, run = run_copy
    monkeypatch.delenv(ALLOW_CODE_CHANGE_ENV, raising=False)
    started = json.loads((run / 'config.json').read_text())['code_history']
    assert [c['step'] for c in started] == [0] and len(started[0]['source_sha256']) == 64
    monkeypatch.setattr(trainer, 'code_version', lambda: {'source_sha256': 'f' * 64, 'git_commit': 'e' * 40})
    before = snapshot(run)
    code, _, err = resume(runs)
    assert code == 1 and 'it trained under other code' in err and '--allow-code-change' in err, err
    no_traceback(err)
    assert snapshot(run) == before
    code, out, err = resume(runs, '--allow-code-change')
    assert code == 0, err
    history = json.loads((run / 'config.json').read_text())['code_history']
    assert [c['step'] for c in history] == [0, 3] and history[1]['source_sha256'] == 'f' * 64


@pytest.mark.parametrize('damage', ['deleted', 'begun again'])
def test_a_resume_whose_metrics_were_lost_is_refused(run_copy, damage):
    runs, run = run_copy
    log = run / 'metrics.jsonl'
    if damage == 'deleted': log.unlink()
    else: log.write_text('\n'.join(l for l in log.read_text().splitlines() if json.loads(l)['step'] > 0) + '\n')
    before = snapshot(run)
    code, _, err = resume(runs)
    assert code == 1 and 'its curves up to that step are lost' in err and 'checkpoint is at step 3' in err, err
    no_traceback(err)
    assert snapshot(run) == before


def test_exporting_an_unfinished_run_is_refused_unless_allowed(run_copy, tmp_path):
    pytest.importorskip('transformers')
    runs, run = run_copy
    code, _, err = cli('export', run, tmp_path / 'hf')
    assert code == 2 and 'has not finished: its last checkpoint is at step 3 of 6' in err and '--allow-incomplete' in err, err
    assert not (tmp_path / 'hf').exists()
    with pytest.warns(UserWarning, match='at step 3 of 6: the run has not finished'):
        code, _, err = cli('export', run, tmp_path / 'hf', '--allow-incomplete')
    assert code == 0, err
    assert json.loads((tmp_path / 'hf' / 'moe_study_export.json').read_text())['step'] == 3


def test_bench_refuses_a_study_whose_reference_is_dense():
    code, _, err = cli('bench', '--preset', 'equal_cpu', '--steps', '1')
    assert code == 2 and "that reference is dense (ffn='dense')" in err and 'cpu' in err, err


def test_a_folder_corpus_reads_any_case_and_sub_folders_and_lists_what_it_skipped(tmp_path):
    from moe_study.data import read_documents
    (tmp_path / 'sub').mkdir(); (tmp_path / '.git').mkdir()
    for name, text in [('a.txt', 'alpha'), ('B.TXT', 'bravo'), ('sub/e.txt', 'echo'), ('C.JsonL', '{"text": "charlie"}'),
                       ('notes.md', 'not read'), ('.git/x.txt', 'hidden')]:
        (tmp_path / name).write_text(text)
    (tmp_path / 'loop.txt').symlink_to(tmp_path / 'loop.txt')
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) that are not .txt, .jsonl, .parquet files: "
                                         r"loop.txt \(a link that leads nowhere\), notes.md"):
        docs = read_documents(tmp_path)
    assert docs == ['bravo', 'charlie', 'alpha', 'echo']
    (tmp_path / 'loop').symlink_to(tmp_path / 'loop')
    code, _, err = cli('data', '--preset', 'smoke', '--data', tmp_path / 'loop')
    assert code == 2 and 'is a symbolic link that leads nowhere (broken, or a loop)' in err, err


def test_identical_documents_are_named_as_the_reason_nothing_was_held_out(tmp_path):
    (tmp_path / 'same.jsonl').write_text('{"text": "the same story"}\n' * 500)
    code, _, err = cli('data', '--preset', 'smoke', '--data', tmp_path / 'same.jsonl')
    assert code == 2 and 'only 1 of them differ, and identical documents are held out together' in err, err


def test_a_warmup_longer_than_the_run_is_warned_of(tmp_path):
    with pytest.warns(UserWarning, match=r"warmup_steps=50 is not shorter than the run \(6 steps\): .* peaks at 12.0% of lr"):
        code, _, err = cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', tmp_path, '--quiet',
                           '--set', 'max_steps=6', '--set', 'warmup_steps=50', '--set', 'sample_tokens=0', '--until', '1')
    assert code == 0, err


def test_a_run_refused_for_a_changed_corpus_is_not_reported_as_the_result(tmp_path):
    from moe_study.stories import synthetic_stories
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n\n'.join(synthetic_stories(11, 300, 'train', 0, 3000)))
    argv = ['study', '--preset', 'smoke', '--variants', 'moe', '--seeds', '0', '--data', corpus, '--runs-dir', tmp_path / 'runs',
            '--report-dir', tmp_path / 'report', '--set', 'max_steps=4', '--set', 'warmup_steps=1', '--set', 'eval_every=2',
            '--set', 'sample_tokens=0', '--set', 'data.val_fraction=0.1']
    code, _, err = cli(*argv)
    assert code == 0, err
    corpus.write_text('\n\n'.join(synthetic_stories(12, 300, 'train', 0, 3000)))      # the same file, other text
    code, out, err = cli(*argv)
    assert code == 1 and 'FAILED moe seed 0' in err and 'REPORT FAILED' in err and 'is not the run this study asks for' in err, err
    page = next((tmp_path / 'report').glob('*/index.html')).read_text()
    assert 'report refused' in page and 'What we found' not in page


# --- 7. resource limits up front ---------------------------------------------------------------------------------

@pytest.mark.parametrize('argv', [
    ['train', '--preset', 'smoke', '--variant', 'moe', '--set', 'model.n_experts=4096', '--set', 'model.d_expert=8192'],
    ['study', '--preset', 'smoke', '--variants', 'moe', '--set', 'model.d_model=16384'],
    ['bench', '--preset', 'smoke', '--steps', '1', '--set', 'model.d_model=16384'],
], ids=['train', 'study', 'bench'])
def test_a_model_too_large_for_the_machine_is_refused_before_allocating(argv, tmp_path):
    import psutil
    extra = [] if argv[0] == 'bench' else ['--runs-dir', tmp_path / 'runs']
    code, _, err = cli(*argv, *extra)
    assert code == 2 and 'needs at least' in err and "more than this machine's memory" in err, err
    assert f"{psutil.virtual_memory().total / 2 ** 30:,.1f} GiB" in err and 'lower batch_size' in err
    no_traceback(err)
    assert not (tmp_path / 'runs').exists()


def test_the_matching_solver_finds_a_far_goal_in_log_steps(monkeypatch):
    import moe_study.params as params
    counted, calls = params.count_params, []
    monkeypatch.setattr(params, 'count_params', lambda cfg: calls.append(1) or counted(cfg))
    code, out, err = cli('params', '--preset', 'smoke', '--set', 'model.d_expert=20000000')
    assert code == 0 and 'dense_active' in out, err
    assert len(calls) < 1_000, f"the solver counted {len(calls):,} sizes (a linear scan counts millions)"


# --- 8. damaged files of a finished run name the file and the fix ---------------------------------------------------

def damage(path: Path, how: str) -> None:
    if how == 'cut': path.write_bytes(path.read_bytes()[:20])
    elif how == 'empty': path.write_bytes(b'')
    else:                                                       # one line of metrics.jsonl cut short
        lines = path.read_text().splitlines(); lines[1] = lines[1][:15]; path.write_text('\n'.join(lines) + '\n')


@pytest.mark.parametrize('name, how, where', [
    ('summary.json', 'cut', 'study'), ('summary.json', 'empty', 'study'), ('config.json', 'cut', 'study'),
    ('val_sequences_best.npz', 'cut', 'study'), ('metrics.jsonl', 'line', 'study'), ('config.json', 'cut', 'export'),
])
def test_a_damaged_file_of_a_finished_run_is_named_with_its_fix(reported, tmp_path, name, how, where):
    import shutil
    study, runs, _, _ = reported
    work = tmp_path / 'runs'; shutil.copytree(runs, work)
    run = work / 'mine' / 'moe' / 'seed0'
    damage(run / name, how)
    before = snapshot(work)
    if where == 'study':
        code, out, err = cli('study', '--preset', study, '--variants', 'moe', '--seeds', '0', '--runs-dir', work,
                             '--report-dir', tmp_path / 'report')
    else:
        pytest.importorskip('transformers')
        code, out, err = cli('export', run, tmp_path / 'hf')
    assert code == 1 and f"{run / name}" in err and 'is damaged' in err, err
    assert f"delete {run} to train that run again" in err
    no_traceback(err)
    assert snapshot(work) == before, "a damaged run was changed"


# --- 9. messages that say the right thing --------------------------------------------------------------------------

def test_a_number_given_as_a_papermill_path_is_named():
    res = subprocess.run([sys.executable, '-m', 'papermill', 'nbs/train.ipynb', '/dev/null', '-p', 'preset', 'smoke',
                          '-p', 'runs_dir', '5'], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and 'runs_dir=5: must be text (a name or a path)' in res.stderr and '-r runs_dir 5' in res.stderr
    assert 'TypeError' not in res.stderr
