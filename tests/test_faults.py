"""Faults and bad input, as a hostile user would try them: for each, the exit status, a message that names the
problem and the fix, and everything written before left intact."""
import io, json, os, resource, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from conftest import PAPERMILL, ROOT, TINY_SET, TINY_STUDY, cli, no_traceback, resume, snapshot
from moe_study.analysis import load_runs
from moe_study.studies import get_preset, study_to_dict
from moe_study.fileio import exclusive
from moe_study.stories import synthetic_stories
from moe_study.sweep import ReportRefused, render_report
from moe_study.trainer import read_metrics
from moe_study.checkpoint import state_digest


# --- 8. inputs checked up front: exit 2, the field and what is allowed named, nothing written ---------------------

BAD_TRAIN_INPUT = {
    'negative seed': (['--seed', '-1'], "seed=-1: must be an integer from 0 to 4294967295"),
    'huge seed': (['--seed', str(10 ** 30)], "must be an integer from 0 to 4294967295"),
    'until 0': (['--until', '0'], "until=0: must be a step >= 1"),
    'negative until': (['--until', '-5'], "until=-5: must be a step >= 1"),
    'lr inf': (['--set', 'lr=inf'], "lr=inf: must be a finite positive number"),
    'lr nan': (['--set', 'lr=nan'], "lr=nan: must be a finite positive number"),
    'negative lr': (['--set', 'lr=-1'], "lr=-1: must be a finite positive number"),
    'max_steps 0': (['--set', 'max_steps=0'], "max_steps=0: must be None or a positive integer"),
    'fractional batch': (['--set', 'batch_size=2.5'], "batch_size=2.5: must be a positive integer"),
    'absurd threads': (['--set', 'threads=100000'], "threads=100000: must be None or an integer from 1 to 512"),
    'top_k above experts': (['--set', 'model.top_k=9'], "top_k=9: must be between 1 and n_experts=4"),
    'width not divisible': (['--set', 'model.d_model=30'], "d_model=30: must be divisible by n_heads"),
    'infinite z-loss': (['--set', 'model.router_losses={"lb": 0.01, "z": Infinity}'], "to finite coefficients >= 0"),
    'unknown router': (['--set', 'model.router=soft'], "router='soft': must be one of ('topk', 'aux_free'"),     # and any router a plugin registered
    'unknown field': (['--set', 'max_stepz=3'], "unknown TrainConfig field(s) ['max_stepz']"),
    'unknown section': (['--set', 'optim.lr=3'], "name a field as model.FIELD, data.FIELD or train.FIELD"),
    'no equals sign': (['--set', 'max_steps'], "expected FIELD=VALUE"),
    'unknown variant': (['--variant', 'sparse'], "unknown variant 'sparse' in study 'smoke'; valid variants: moe"),
    'unknown preset': (['--preset', 'huge'], "unknown preset 'huge'; valid presets: smoke"),
    'missing study file': (['--preset', '/nonexistent/study.json'], "cannot read the study declaration"),
    'missing corpus': (['--data', '/nonexistent/corpus.txt'], "does not exist; set DataConfig.path"),
}


@pytest.mark.parametrize('case', list(BAD_TRAIN_INPUT))
def test_bad_train_input_is_refused_before_anything_is_written(case, tmp_path):
    extra, message = BAD_TRAIN_INPUT[case]
    argv = ['train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', tmp_path / 'runs', '--quiet', *extra]
    code, _, err = cli(*argv)
    assert code == 2 and message in err, err
    no_traceback(err)
    assert not (tmp_path / 'runs').exists(), "a refused run left a folder behind"


BAD_OTHER_INPUT = {
    'study negative seed': (['study', '--preset', 'smoke', '--seeds', '0', '-3'], "seed -3: a seed must be an integer"),
    'study huge seed': (['study', '--preset', 'smoke', '--seeds', str(2 ** 40)], "a seed must be an integer from 0"),
    'study jobs 0': (['study', '--preset', 'smoke', '--jobs', '0'], "jobs=0: must be a positive integer"),
    'study unknown variant': (['study', '--preset', 'smoke', '--variants', 'moe', 'dense'], "unknown variant 'dense'"),
    'study bad override': (['study', '--preset', 'smoke', '--set', 'lr=inf'], "lr=inf: must be a finite positive number"),
    'bench steps 0': (['bench', '--preset', 'smoke', '--steps', '0'], "steps=0: must be a positive integer"),
    'bench negative steps': (['bench', '--preset', 'smoke', '--steps', '-2'], "steps=-2: must be a positive integer"),
    'bench absurd threads': (['bench', '--preset', 'smoke', '--threads', '100000'], "threads=100000: must be None or an integer from 1 to 512"),
    'bench zero threads': (['bench', '--preset', 'smoke', '--threads', '0'], "threads=0"),
    'params zero experts': (['params', '--preset', 'smoke', '--set', 'model.n_experts=0'], "n_experts=0: must be a positive integer"),
    'data missing corpus': (['data', '--preset', 'smoke', '--data', '/nonexistent'], "does not exist"),
}


@pytest.mark.parametrize('case', list(BAD_OTHER_INPUT))
def test_bad_input_to_other_commands_is_refused(case, tmp_path):
    argv, message = BAD_OTHER_INPUT[case]
    if argv[0] == 'study': argv = [*argv, '--runs-dir', tmp_path / 'runs', '--report-dir', tmp_path / 'report']
    code, _, err = cli(*argv)
    assert code == 2 and message in err, err
    no_traceback(err)
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'report').exists()


def test_a_study_file_reusing_a_shipped_name_is_refused(tmp_path):
    d = study_to_dict(get_preset('smoke')); d['train']['lr'] = 0.1
    (tmp_path / 'smoke.json').write_text(json.dumps(d))
    code, _, err = cli('train', '--preset', tmp_path / 'smoke.json', '--variant', 'moe', '--runs-dir', tmp_path / 'runs')
    assert code == 2 and "differs from the shipped preset of that name; give it a name of its own" in err


def test_a_study_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / 'mine.json').write_text('{"name": "mine",')
    code, _, err = cli('params', '--preset', tmp_path / 'mine.json')
    assert code == 2 and 'cannot read the study declaration' in err and 'mine.json' in err


# --- papermill: the notebook checks its parameters before it trains ---------------------------------------------

def papermill(tmp_path, *params):
    return subprocess.run([str(PAPERMILL), 'nbs/train.ipynb', str(tmp_path / 'out.ipynb'), '-p', 'preset', 'smoke',
                           '-p', 'runs_dir', str(tmp_path / 'runs'), *params], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize('params, message', [
    (['-p', 'sed', '2'], "train.ipynb has no parameter 'sed'; its parameters are preset, variant, seed"),
    (['-p', 'seed', 'True'], "seed=True: must be an integer from 0 to 4294967295"),
    (['-p', 'overrides', 'max_steps: 3'], "overrides='max_steps: 3': must be a mapping of FIELD to value"),
    (['-y', 'overrides: {max_steps: 0}'], "max_steps=0: must be None or a positive integer"),
], ids=['misspelled parameter', 'boolean seed', 'overrides as a string', 'bad override'])
def test_papermill_bad_parameters_fail_before_training(tmp_path, params, message):
    res = papermill(tmp_path, '-p', 'variant', 'moe', *params)
    assert res.returncode != 0 and message in res.stderr, res.stderr[-3000:]
    assert not list((tmp_path / 'runs').rglob('checkpoint.pt')), "it trained before failing"


# --- 10. data errors name the file --------------------------------------------------------------------------------

def corpus_file(folder: Path, name: str, content) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def parquet_bytes(**columns) -> bytes:
    import pyarrow as pa, pyarrow.parquet as pq
    buf = io.BytesIO(); pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def damaged(raw: bytes) -> bytes:
    raw = bytearray(raw); raw[100:140] = b'\xff' * 40
    return bytes(raw)


BAD_CORPORA = {
    'latin-1 text': ('old.txt', 'un café noir\n'.encode('latin-1'), "old.txt is not UTF-8 text (byte 6"),
    'latin-1 jsonl': ('old.jsonl', '{"text": "café"}\n'.encode('latin-1'), "old.jsonl is not UTF-8 text"),
    'null text': ('rows.jsonl', '{"text": "a story"}\n{"text": null}\n', "rows.jsonl:2: field 'text' is null, not text"),
    'numeric text': ('rows.jsonl', '{"text": 42}\n', "rows.jsonl:1: field 'text' is 42, not text"),
    'broken json line': ('rows.jsonl', '{"text": "a"}\n{"text": \n', "rows.jsonl:2 is not valid JSON"),
    'missing field': ('rows.jsonl', '{"body": "a"}\n', "rows.jsonl:1 has no field 'text' (it has ['body'])"),
    'damaged parquet': ('rows.parquet', damaged(parquet_bytes(text=['one story', 'two stories'] * 300)), "rows.parquet"),
    'not parquet': ('rows.parquet', b'this is not a parquet file', "cannot read"),
    'numeric parquet column': ('rows.parquet', parquet_bytes(text=[1, 2, 3]), "column 'text' holds int64, not text"),
    'empty text file': ('empty.txt', '', "no documents in"),
    'unsupported file': ('rows.csv', 'text\na story\n', "supported files are .txt, .jsonl, .parquet"),
}


@pytest.mark.parametrize('case', list(BAD_CORPORA))
def test_bad_corpus_names_the_file(case, tmp_path):
    name, content, message = BAD_CORPORA[case]
    path = corpus_file(tmp_path, name, content)
    code, _, err = cli('data', '--preset', 'smoke', '--data', path)
    assert code == 2 and message in err, err
    no_traceback(err)
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_a_folder_without_text_files_is_refused(tmp_path):
    (tmp_path / 'notes.md').write_text('hello')
    code, _, err = cli('data', '--preset', 'smoke', '--data', tmp_path)
    assert code == 2 and "no .txt, .jsonl, .parquet files in" in err


HELD_OUT = ['--set', 'data.val_fraction=0.1']


@pytest.fixture(scope='session')
def own_cache(tmp_path_factory):
    "A corpus of 400 generated stories and its token cache (in the project's cache folder, keyed by the corpus)."
    folder = tmp_path_factory.mktemp('corpus')
    (folder / 'stories.txt').write_text('\n\n'.join(synthetic_stories(7, 50, 'train', 0, 400)))
    code, out, err = cli('data', '--preset', 'smoke', '--data', folder / 'stories.txt', *HELD_OUT, '--json')
    assert code == 0, err
    return folder / 'stories.txt', Path(json.loads(out)['path'])


@pytest.mark.parametrize('damage, message', [
    (lambda c: (c / 'manifest.json').write_text((c / 'manifest.json').read_text().replace('"bytes_per_token": ', '"bytes_per_token": 1')),
     "manifest.json fails its SHA-256 check"),
    (lambda c: (c / 'manifest.json').write_text('{'), "has no readable manifest.json"),
    (lambda c: (c / 'val.bin').write_bytes((c / 'val.bin').read_bytes()[:-2] + b'\x00\x00'), "val.bin fails its SHA-256 check"),
    (lambda c: (c / 'train.bin').write_bytes((c / 'train.bin').read_bytes()[:-2]), "train.bin has"),
    (lambda c: (c / 'tokenizer.model').unlink(), "tokenizer.model is missing"),
], ids=['edited manifest number', 'unreadable manifest', 'flipped token', 'truncated tokens', 'missing tokenizer'])
@pytest.mark.xdist_group('own_cache')      # one cache in the project's cache folder: damaged and rebuilt by one worker
def test_a_damaged_token_cache_is_refused_until_rebuilt(own_cache, damage, message):
    corpus, cache = own_cache
    damage(cache)
    code, _, err = cli('data', '--preset', 'smoke', '--data', corpus, *HELD_OUT)
    assert code == 2 and message in err and '--rebuild' in err, err
    code, _, err = cli('data', '--preset', 'smoke', '--data', corpus, *HELD_OUT, '--rebuild')
    assert code == 0, err


# --- 6. checkpoints are verified; 2. a finished run checks its identity --------------------------------------------

def test_a_half_run_resumes_and_finishes(run_copy):
    runs, run = run_copy
    code, out, err = resume(runs)
    assert code == 0 and 'best val loss' in out, err
    assert [r['step'] for r in read_metrics(run) if r['split'] == 'val'] == [0, 3, 6]


CHECKPOINT_DAMAGE = {
    'empty file': (lambda b: b'', "an empty file); delete it"),
    'truncated file': (lambda b: b[:len(b) // 2], "cannot be read"),
    'not a checkpoint': (lambda b: b'hello world' * 10, "cannot be read"),
}


@pytest.mark.parametrize('case', list(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_refused_and_left_as_it_is(run_copy, case):
    runs, run = run_copy
    damage, message = CHECKPOINT_DAMAGE[case]
    (run / 'checkpoint.pt').write_bytes(damage((run / 'checkpoint.pt').read_bytes()))
    before = snapshot(runs)
    code, _, err = resume(runs)
    assert code == 1 and message in err and str(run) in err, err
    no_traceback(err)
    assert snapshot(runs) == before


def rewrite_checkpoint(path: Path, change, keep_digest=False):
    state = torch.load(path, weights_only=True)
    digest = state.pop('sha256')
    change(state)
    state['sha256'] = digest if keep_digest else state_digest(state)
    torch.save(state, path)


@pytest.mark.parametrize('change, keep_digest, message', [
    (lambda s: s['model']['norm.weight'].add_(1e-6), True, "fails its SHA-256 check"),
    (lambda s: s.__setitem__('step', 4), True, "fails its SHA-256 check"),
    (lambda s: s.pop('identity'), False, "it lacks identity"),
    (lambda s: s['model']['norm.weight'].fill_(float('nan')), False, "holds non-finite values (model.norm.weight)"),
], ids=['a changed weight', 'a changed step', 'no identity', 'non-finite weights'])
def test_a_changed_checkpoint_is_refused(run_copy, change, keep_digest, message):
    runs, run = run_copy
    rewrite_checkpoint(run / 'checkpoint.pt', change, keep_digest)
    before = snapshot(runs)
    code, _, err = resume(runs)
    assert code == 1 and message in err, err
    assert snapshot(runs) == before


def test_a_checkpoint_without_a_digest_is_refused(run_copy):
    runs, run = run_copy
    state = torch.load(run / 'checkpoint.pt', weights_only=True); del state['sha256']
    torch.save(state, run / 'checkpoint.pt')
    code, _, err = resume(runs)
    assert code == 1 and 'it lacks sha256' in err


def test_a_last_metrics_line_torn_by_a_kill_is_dropped(run_copy):
    runs, run = run_copy
    with open(run / 'metrics.jsonl', 'a') as f: f.write('{"step": 4, "split": "tra')
    code, _, err = resume(runs)
    assert code == 0, err
    steps = [r['step'] for r in read_metrics(run) if r['split'] == 'train']
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_damaged_metrics_line_is_named(run_copy):
    runs, run = run_copy
    lines = (run / 'metrics.jsonl').read_text().splitlines()
    lines[1] = lines[1][:20]
    (run / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
    code, _, err = resume(runs)
    assert code == 1 and 'metrics.jsonl:2 is not a JSON record' in err, err


@pytest.fixture
def finished(reported):
    "A finished run of a study declared in a user's file (the shared `reported` one): (study file, runs dir, run dir)."
    study, runs, _, _ = reported
    return study, runs, runs / 'mine' / 'moe' / 'seed0'


def test_a_finished_run_asked_for_with_an_edited_declaration_is_refused(finished, tmp_path):
    study, runs, run = finished
    d = json.loads(study.read_text()); d['train']['lr'] = 0.1
    (tmp_path / 'mine.json').write_text(json.dumps(d))
    before = snapshot(runs)
    code, _, err = cli('train', '--preset', tmp_path / 'mine.json', '--variant', 'moe', '--runs-dir', runs, '--quiet')
    assert code == 1 and 'holds a finished run of another configuration (train.lr: 0.003 -> 0.1)' in err, err
    assert snapshot(runs) == before


def test_a_finished_run_asked_for_again_answers_without_training(finished):
    study, runs, run = finished
    before = snapshot(runs)
    code, out, err = cli('train', '--preset', study, '--variant', 'moe', '--runs-dir', runs, '--quiet')
    assert code == 0 and 'best val loss' in out
    assert snapshot(runs) == before


def test_a_summary_without_its_config_is_refused(finished, tmp_path):
    study, runs, run = finished
    copy = tmp_path / 'runs'; shutil.copytree(runs, copy)
    (copy / 'mine' / 'moe' / 'seed0' / 'config.json').unlink()
    code, _, err = cli('train', '--preset', study, '--variant', 'moe', '--runs-dir', copy, '--quiet')
    assert code == 1 and 'has a summary.json but no readable config.json' in err


# --- 3. the NaN guard guards the weights ---------------------------------------------------------------------------

def test_a_run_that_diverges_before_its_first_checkpoint_says_none_is_kept(tmp_path):
    argv = ['train', '--preset', 'smoke', '--variant', 'dense_active', '--runs-dir', tmp_path, '--quiet',
            '--set', 'lr=1e6', '--set', 'warmup_steps=0']
    for attempt in range(2):                                   # and a rerun does the same, never resuming into a NaN
        code, _, err = cli(*argv)
        assert code == 1 and 'no checkpoint was written, so a rerun starts from step 0' in err, err
        assert not list(tmp_path.rglob('checkpoint.pt'))


def test_a_run_that_diverges_keeps_its_last_finite_checkpoint(tmp_path):
    argv = ['train', '--preset', 'smoke', '--variant', 'dense_active', '--runs-dir', tmp_path, '--quiet',
            '--set', 'lr=1000', '--set', 'warmup_steps=30', '--set', 'checkpoint_every=5']
    code, _, err = cli(*argv)
    assert code == 1 and 'gradient norm nan at step 10' in err and 'the checkpoint of step 5' in err, err
    ckpt, = tmp_path.rglob('checkpoint.pt')
    first = ckpt.read_bytes()
    code, _, err = cli(*argv)                                   # the rerun resumes from step 5 and stops at 10 again
    assert code == 1 and 'gradient norm nan at step 10' in err and 'the checkpoint of step 5' in err, err
    assert ckpt.read_bytes() == first


# --- 5. one writer per run directory -------------------------------------------------------------------------------

def test_a_run_directory_in_use_is_refused_naming_the_holder(run_copy):
    runs, run = run_copy
    before = snapshot(runs)
    with exclusive(run):
        code, _, err = resume(runs)
    assert code == 1 and f"is in use by process {os.getpid()} on" in err and 'wait for it to finish' in err, err
    assert snapshot(runs) == before
    assert resume(runs)[0] == 0                                 # the lock went with its holder


# --- 7. file-system faults are errors, not tracebacks --------------------------------------------------------------

def test_runs_dir_naming_a_file(tmp_path):
    (tmp_path / 'runs').write_text('not a folder')
    code, _, err = resume(tmp_path / 'runs')
    assert code == 1 and str(tmp_path / 'runs') in err and 'a folder was expected where a file is' in err, err
    no_traceback(err)
    assert (tmp_path / 'runs').read_text() == 'not a folder'


def test_an_unwritable_runs_dir(tmp_path):
    if os.geteuid() == 0:                                       # root writes anywhere; /sys refuses even root
        if not Path('/sys').is_dir(): pytest.skip('no /sys to stand in for a read-only folder')
        runs = Path('/sys/moe_study_runs')
    else:
        runs = tmp_path / 'ro'; runs.mkdir(); runs.chmod(0o500)
    code, _, err = resume(runs)
    assert code == 1 and str(runs) in err and ('choose a folder' in err), err
    no_traceback(err)


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(run_copy):
    runs, run = run_copy
    before = (run / 'checkpoint.pt').read_bytes()
    limit = len(before) // 2                                    # a file may not grow past this: the disk is "full"

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)           # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'train', '--preset', 'smoke', '--variant', 'moe',
                          '--runs-dir', str(runs), '--quiet', *TINY_SET], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=small_disk)
    assert res.returncode == 1 and 'could not write the checkpoint' in res.stderr and 'is kept' in res.stderr, res.stderr
    no_traceback(res.stderr)
    assert (run / 'checkpoint.pt').read_bytes() == before
    assert not list(run.glob('.*.tmp')), "a temporary file was left to fill the disk"
    code, _, err = resume(runs)                                 # space again: it resumes from the kept checkpoint
    assert code == 0, err


def test_a_full_disk_while_building_the_token_cache_leaves_no_scratch(tmp_path):
    (tmp_path / 'stories.txt').write_text('\n\n'.join(synthetic_stories(11, 50, 'train', 0, 3000)))

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
    proc = subprocess.Popen([sys.executable, '-m', 'moe_study', 'data', '--preset', 'smoke', '--data', str(tmp_path / 'stories.txt'),
                             *HELD_OUT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=small_disk)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and 'File too large; free disk space' in err and '_cache' in err, err
    no_traceback(err)
    # its own scratch (<what>@<host>-<pid>); another test process may be building a cache of its own beside it
    left = [p for p in (ROOT / 'runs' / '_cache').glob('.building-*') if p.name.endswith(f"-{proc.pid}")]
    assert not left, f"a half-built cache was left behind: {left}"


def test_an_unwritable_report_folder_is_an_error_not_a_traceback(finished):
    study, runs, run = finished
    if not Path('/sys').is_dir(): pytest.skip('no /sys to stand in for a read-only folder')
    code, out, err = cli('study', '--preset', study, '--variants', 'moe', '--seeds', '0', '--runs-dir', runs,
                         '--report-dir', '/sys/moe_study_report')
    assert code == 1 and '/sys/moe_study_report' in err and 'choose a folder' in err, err
    no_traceback(err)


# --- 9. the report is robust; 1. a refused report stays refused ----------------------------------------------------

def test_a_stray_folder_under_a_variant_is_skipped_with_a_warning(finished, tmp_path):
    study, runs, run = finished
    copy = tmp_path / 'runs'; shutil.copytree(runs, copy)
    shutil.copytree(copy / 'mine' / 'moe' / 'seed0', copy / 'mine' / 'moe' / 'seed0.bak')
    with pytest.warns(UserWarning, match=r"skipping .*seed0.bak: not a run directory"):
        complete, incomplete = load_runs('mine', copy)
    assert complete.seed.tolist() == [0] and incomplete == []


def test_a_study_with_no_complete_run_says_so(tmp_path):
    with pytest.raises(ReportRefused, match="no complete run of study smoke"):
        render_report(get_preset('smoke'), tmp_path / 'runs', tmp_path / 'report')
    assert 'report refused' in (tmp_path / 'report' / 'smoke' / 'index.html').read_text()


def test_a_study_whose_every_run_fails_exits_nonzero_with_a_refusal(tmp_path):
    code, out, err = cli('study', '--preset', 'smoke', '--variants', 'moe', '--seeds', '0', '--runs-dir', tmp_path / 'runs',
                         '--report-dir', tmp_path / 'report', '--set', 'lr=1e6', '--set', 'warmup_steps=0')
    assert code == 1 and '0 run(s) executed' in out and 'FAILED moe seed 0' in err and 'REPORT FAILED: no complete run' in err, err


@pytest.mark.long
def test_study_lifecycle_repeated_seed_unchanged_rerun_and_a_refusal_that_stays(tmp_path):
    runs, report = tmp_path / 'runs', tmp_path / 'report'
    argv = ['study', '--preset', 'smoke', '--variants', 'moe', 'dense_active', '--seeds', '7', '7', '--runs-dir', runs,
            '--report-dir', report, *TINY_SET]
    code, out, err = cli(*argv)                                 # --seeds 7 7: seed 7 once
    assert code == 0 and '2 run(s) executed' in out, err
    page = report / TINY_STUDY.name / 'index.html'
    assert 'report refused' not in page.read_text()
    code, out, err = cli(*argv)
    assert code == 0 and '(unchanged, not re-rendered)' in out, out + err
    config = runs / TINY_STUDY.name / 'dense_active' / 'seed7' / 'config.json'
    c = json.loads(config.read_text()); c['identity']['train']['lr'] = 0.1   # a run from another recipe slips in
    config.write_text(json.dumps(c))
    for attempt in range(2):                                    # refused, and refused again with nothing changed
        code, out, err = cli(*argv)
        assert code == 1 and 'REPORT FAILED: refusing to compare these runs' in err, err
        assert 'dense_active/seed7' in err and 'train.lr' in err
        results = json.loads((report / TINY_STUDY.name / 'results.json').read_text())
        assert results['fair'] is False
        assert 'report refused' in page.read_text() and 'dense_active/seed7' in page.read_text()


# --- 4. stopping stops ----------------------------------------------------------------------------------------------

LONG = ['--set', 'max_steps=100000', '--set', 'log_every=1', '--set', 'checkpoint_every=5', '--set', 'eval_every=1000']


def training_started(runs: Path, n: int) -> bool:
    "At least `n` runs under `runs` have written a checkpoint."
    return len(list(runs.rglob('checkpoint.pt'))) >= n


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition(): return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def unlocked(runs: Path) -> bool:
    "True when no process holds any run directory under `runs`."
    for lock in runs.rglob('.lock'):
        try:
            with exclusive(lock.parent): pass
        except Exception: return False
    return True


def start_study(runs: Path, report: Path):
    cmd = [sys.executable, '-m', 'moe_study', 'study', '--preset', 'smoke', '--variants', 'moe', 'dense_active',
           '--seeds', '0', '--jobs', '2', '--runs-dir', str(runs), '--report-dir', str(report), *LONG]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.long
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['Ctrl-C', 'SIGTERM'])
def test_interrupting_a_study_stops_its_runs_promptly_and_they_resume(tmp_path, sig):
    runs, report = tmp_path / 'runs', tmp_path / 'report'
    proc = start_study(runs, report)
    try: wait_for(lambda: training_started(runs, 2), 120, 'both runs to train')
    except AssertionError: proc.kill(); raise
    os.killpg(proc.pid, sig)                                    # as a terminal's Ctrl-C does: the study's process group
    t0 = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'interrupted: 2 running run(s) stopped' in err, err
    assert time.time() - t0 < 30, "the study did not stop promptly"
    wait_for(lambda: unlocked(runs), 15, 'the runs to stop')
    ckpts = list(runs.rglob('checkpoint.pt'))
    steps = [torch.load(c, weights_only=True)['step'] for c in ckpts]
    time.sleep(2)
    assert [torch.load(c, weights_only=True)['step'] for c in ckpts] == steps, "a run kept training"
    run = ckpts[0].parent                                       # resumable: it goes on from its checkpoint
    variant = run.parent.name
    code, out, err = cli('train', '--preset', 'smoke', '--variant', variant, '--runs-dir', runs, '--quiet', *LONG,
                         '--until', max(steps) + 5)
    assert code == 0 and 'stopped after step' in out, err


def test_killing_a_study_with_sigkill_leaves_no_run_training(tmp_path):
    runs, report = tmp_path / 'runs', tmp_path / 'report'
    proc = start_study(runs, report)
    try: wait_for(lambda: training_started(runs, 2), 120, 'both runs to train')
    except AssertionError: proc.kill(); raise
    proc.kill(); proc.communicate()                             # kill -9: no chance to stop its children
    wait_for(lambda: unlocked(runs), 30, 'the orphaned runs to stop')
    import psutil
    wait_for(lambda: not [p for p in psutil.process_iter(['cmdline'])
                          if str(runs) in ' '.join(p.info['cmdline'] or [])], 30, 'papermill to exit')


def test_ctrl_c_on_train_exits_130_and_the_run_resumes(tmp_path):
    cmd = [sys.executable, '-m', 'moe_study', 'train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', str(tmp_path),
           '--quiet', *LONG]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try: wait_for(lambda: any(tmp_path.rglob('checkpoint.pt')), 120, 'a checkpoint')
    except AssertionError: proc.kill(); raise
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and 'resumes from its last checkpoint' in err, err
    no_traceback(err)
    ckpt, = tmp_path.rglob('checkpoint.pt')
    step = torch.load(ckpt, weights_only=True)['step']
    code, out, err = cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', tmp_path, '--quiet', *LONG,
                         '--until', step + 5)
    assert code == 0 and f'stopped after step {step + 5}' in out, err
