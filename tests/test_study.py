"""The smoke-preset study end to end: sweep through papermill, report, skip, resume, failure."""
import json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def study(tmp, *extra):
    return subprocess.run([sys.executable, '-m', 'moe_study', 'study', '--preset', 'smoke', '--seeds', '0', '1',
                           '--runs-dir', str(tmp / 'runs'), '--report-dir', str(tmp / 'report'), *extra],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope='module')
def first_pass(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('study')
    return tmp, study(tmp)


def test_sweep_runs_every_variant_and_seed_and_renders_the_report(first_pass):
    tmp, res = first_pass
    assert res.returncode == 0, res.stderr[-3000:]
    assert '6 run(s) executed, 0 already complete, 0 failed' in res.stdout
    for v in ('moe', 'dense_active', 'dense_total'):
        for s in (0, 1):
            run = tmp / 'runs' / 'smoke' / v / f'seed{s}'
            assert (run / 'summary.json').exists() and (run / 'train.ipynb').exists()
    report = tmp / 'report' / 'smoke'
    html = (report / 'index.html').read_text()
    for text in ('Fairness audit', 'matched_active', 'matched_total', '1.5788 ± 0.0020', 'Routing', 'Samples',
                 'every run of the study is complete'):
        assert text in html, text
    assert 'import ' not in html.split('<body', 1)[1].split('Fairness audit')[0]      # no input cells
    results = json.loads((report / 'results.json').read_text())
    assert set(results['variants']) == {'moe', 'dense_active', 'dense_total'}
    gap = results['gaps']['matched_active']
    assert gap['seeds'] == [0, 1] and len(gap['values']) == 2 and gap['ci95'][0] <= gap['mean'] <= gap['ci95'][1]
    assert results['fair'] and results['failed'] == [] and results['incomplete'] == []


def test_rerun_executes_nothing(first_pass):
    tmp, _ = first_pass
    html = tmp / 'report' / 'smoke' / 'index.html'
    before = html.stat().st_mtime_ns
    res = study(tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    assert '0 run(s) executed, 6 already complete' in res.stdout and 'not re-rendered' in res.stdout
    assert html.stat().st_mtime_ns == before


def test_deleting_a_summary_reruns_only_that_run_and_failures_are_reported(first_pass):
    tmp, _ = first_pass
    runs = tmp / 'runs' / 'smoke'
    untouched = {p: p.stat().st_mtime_ns for p in runs.glob('*/seed*/summary.json') if 'dense_total/seed1' not in str(p)}
    (runs / 'dense_total' / 'seed1' / 'summary.json').unlink()
    (runs / 'moe' / 'seed0' / 'summary.json').unlink()
    (runs / 'moe' / 'seed0' / 'checkpoint.pt').write_bytes(b'not a checkpoint')      # this one will fail
    res = study(tmp)
    assert res.returncode == 1
    assert '1 run(s) executed, 4 already complete, 1 failed' in res.stdout
    assert 'FAILED moe seed 0' in res.stderr and 'cannot be read' in res.stderr
    assert (runs / 'dense_total' / 'seed1' / 'summary.json').exists()
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items() if p.exists())
    results = json.loads((tmp / 'report' / 'smoke' / 'results.json').read_text())
    assert [(f['variant'], f['seed']) for f in results['failed']] == [('moe', 0)]
    assert [(i['variant'], i['seed']) for i in results['incomplete']] == [('moe', 0)]
    assert results['gaps']['matched_active']['seeds'] == [1]                 # only complete pairs count
    assert 'Incomplete and failed runs' in (tmp / 'report' / 'smoke' / 'index.html').read_text()


def test_unknown_variant_for_the_study(tmp_path):
    res = study(tmp_path, '--variants', 'moe', 'sparse')
    assert res.returncode == 2 and "invalid choice: 'sparse'" in res.stderr


def test_a_run_in_the_sweep_equals_the_same_run_alone(first_pass, tmp_path):
    # the sweep executed two one-thread runs at a time; the preset fixes the threads, so the numbers do not depend on it
    from moe_study.trainer import read_metrics, train
    tmp, _ = first_pass
    swept = tmp / 'runs' / 'smoke' / 'dense_active' / 'seed1'
    alone = train('smoke', 'dense_active', 1, out_dir=tmp_path / 'alone', progress=False)
    assert alone['best_val_loss'] == json.loads((swept / 'summary.json').read_text())['best_val_loss']
    assert read_metrics(tmp_path / 'alone', timing=False) == read_metrics(swept, timing=False)


def test_jobs_must_be_positive(tmp_path):
    res = study(tmp_path, '--jobs', '0')
    assert res.returncode == 2 and 'jobs=0: must be a positive integer' in res.stderr
