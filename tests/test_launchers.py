"""`study --launcher submitit-local`: every run a submitit job (a real process through submitit's local executor), the
report rendered once they have all ended; `--launcher slurm` off a cluster is a clear error."""
import json

import pytest

from conftest import command as cli


@pytest.mark.long
def test_study_through_submitit_jobs_renders_its_report(tmp_path):
    runs, reports = tmp_path / 'runs', tmp_path / 'report'
    res = cli('study', '--preset', 'smoke', '--seeds', '0', '--launcher', 'submitit-local',
              '--runs-dir', str(runs), '--report-dir', str(reports))
    assert res.returncode == 0, res.stderr[-3000:]
    assert '3 run(s) executed' in res.stdout
    for variant in ('moe', 'dense_active', 'dense_total'):
        run = runs / 'smoke' / variant / 'seed0'
        assert json.loads((run / 'summary.json').read_text())['status'] == 'complete'
        assert (run / 'train.ipynb').exists()                            # the notebook the job executed
    logs = list((runs / 'smoke' / '_jobs').glob('*/*_log.out'))
    assert len(logs) == 3, logs                                          # one submitit job per run
    assert (reports / 'smoke' / 'index.html').stat().st_size > 10_000
    res = cli('study', '--preset', 'smoke', '--seeds', '0', '--launcher', 'submitit-local',
              '--runs-dir', str(runs), '--report-dir', str(reports))
    assert res.returncode == 0 and '0 run(s) executed, 3 already complete' in res.stdout   # nothing resubmitted


def test_slurm_launcher_off_a_cluster_says_what_to_do(tmp_path):
    res = cli('study', '--preset', 'smoke', '--launcher', 'slurm', '--partition', 'gpu', '--runs-dir', str(tmp_path))
    assert res.returncode == 2 and 'is not a Slurm cluster' in res.stderr and 'submitit-local' in res.stderr
    assert 'Traceback' not in res.stderr
