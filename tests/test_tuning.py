"""A tuned study end to end (chapter 10a): one field of a study file turns tuning on; the tuning runs, the chosen
rates, the runs at them, the audit, the report's section, a rerun that trains nothing, and the shipped record."""
import json, shutil, subprocess, sys

import pytest

from conftest import ROOT, TINY_STUDY, load_json_strict

from moe_study.studies import study_to_dict

pytestmark = pytest.mark.xdist_group('tuned')          # one worker builds the tuned study the tests read
GRID = [1.5e-3, 3e-3, 6e-3]         # smoke's own lr, 3e-3, in the middle: the shared arm


def study(tmp, preset, *extra):
    return subprocess.run([sys.executable, '-m', 'moe_study', 'study', '--preset', str(preset), '--variants', 'moe',
                           'dense_active', '--runs-dir', str(tmp / 'runs'), '--report-dir', str(tmp / 'report'), *extra],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope='session')
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('tuned')
    d = {**study_to_dict(TINY_STUDY), 'name': 'smoke_tuned', 'base': None, 'overrides': {}, 'seeds': [1], 'design_seeds': [0],
         'tuning': {'lrs': GRID, 'seeds': [0], 'extend': 0}}          # the one field that turns tuning on
    (tmp / 'mine.json').write_text(json.dumps(d))
    return tmp, study(tmp, tmp / 'mine.json')


def test_a_study_file_turns_tuning_on_with_one_field(tuned):
    tmp, res = tuned
    assert res.returncode == 0, res.stderr[-3000:]
    # 2 variants x 3 rates on tuning seed 0, the shared arm on seed 1, then 2 variants on seed 1 at the chosen rates
    assert '10 run(s) executed, 0 already complete, 0 failed' in res.stdout, res.stdout
    tune = tmp / 'runs' / 'smoke_tuned' / '_tune'
    assert {p.name for p in (tune / 'moe').iterdir()} == {'lr0.0015', 'lr0.003', 'lr0.006'}
    chosen = json.loads((tmp / 'runs' / 'smoke_tuned' / 'study.json').read_text())['tuning']['chosen']
    assert set(chosen) == {'moe', 'dense_active'} and all(      # the variants asked for
        GRID[0] <= lr <= GRID[-1] for lr in chosen.values())
    for v in ('moe', 'dense_active'):
        config = json.loads((tmp / 'runs' / 'smoke_tuned' / v / 'seed1' / 'config.json').read_text())
        assert config['identity']['train']['lr'] == chosen[v]              # the chosen rate is in the run's identity
    report = tmp / 'report' / 'smoke_tuned'
    results = load_json_strict(report / 'results.json')
    audit = {r['check']: r for r in results['audit']}
    assert results['fair'] and audit['learning rate']['ok'] and audit['tuning runs']['ok'], audit
    block = results['tuning']
    assert block['rule'] == 'per_variant' and block['confirmation_seeds'] == [1]
    assert [x['lr'] for x in block['variants']['moe']['losses']] == GRID
    gap = block['gaps']['matched_active']
    assert gap['shared']['seeds'] == [1] and gap['tuned']['seeds'] == [1]
    html = (report / 'index.html').read_text()
    assert 'Does the answer survive tuning?' in html and 'The tuning runs are in this runs folder' in html
    assert (report / 'tuning.png').exists() and len(json.loads((report / 'tuning.json').read_text())) == 8


def test_a_rerun_trains_nothing_and_tune_prints_the_choice(tuned):
    tmp, _ = tuned
    res = study(tmp, tmp / 'mine.json', '--tune')
    assert res.returncode == 0, res.stderr[-2000:]
    assert '0 run(s) executed' in res.stdout and 'tuning: moe ' in res.stdout, res.stdout


def test_a_study_that_ships_its_rates_reports_the_record(tuned):
    "Without its tuning runs (a fresh clone), a study that declares its chosen rates trains nothing more and shows the record."
    tmp, _ = tuned
    shipped = tmp / 'runs' / 'smoke_tuned' / 'study.json'        # the declaration with tuning.chosen filled in
    (tmp / 'shipped.json').write_text(shipped.read_text())
    shutil.move(tmp / 'runs' / 'smoke_tuned' / '_tune', tmp / 'tune_elsewhere')
    res = study(tmp, tmp / 'shipped.json')
    assert res.returncode == 0, res.stderr[-2000:]
    assert '0 run(s) executed, 2 already complete' in res.stdout, res.stdout
    html = (tmp / 'report' / 'smoke_tuned' / 'index.html').read_text()
    assert 'shown is their record' in html and 'Does the answer survive tuning?' in html
    results = load_json_strict(tmp / 'report' / 'smoke_tuned' / 'results.json')
    assert results['tuning']['declared'] == results['tuning']['in_effect'] and 'tuning runs' not in {r['check'] for r in results['audit']}


def test_tuning_a_study_without_one_is_refused(tmp_path):
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'study', '--preset', 'smoke', '--tune', '--runs-dir',
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "declares no tuning, so there is nothing to tune" in res.stderr, res.stderr[-2000:]
