"""`make gpu-check --dry-run`: every stage of the GPU check at toy size on the CPU, through the command line; the
record and its summary written; a machine without CUDA refused without --dry-run."""
import json, subprocess, sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.long
def test_the_dry_run_runs_every_stage_and_writes_its_record(tmp_path):
    res = subprocess.run(['make', '-s', 'gpu-check', f'ARGS=--dry-run --out {tmp_path / "check"}'], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    record = json.loads((tmp_path / 'check' / 'gpu_check.json').read_text())
    stages = record['stages']
    assert list(stages) == ['environment', 'experts', 'compile', 'speed', 'slice', 'ddp'] and record['dry_run']
    assert not [name for name, s in stages.items() if 'error' in s], stages
    assert stages['experts']['ok'] and len(stages['experts']['cases']) == 18
    assert stages['compile']['moe']['graph_breaks'] == 0 and stages['compile']['dense_active']['graph_breaks'] == 0
    assert stages['speed']['eager']['moe_tokens_per_s'] > 0 and stages['slice']['projected_study_min'] > 0
    assert set(stages['slice']['variants']) == {'moe', 'dense_active', 'dense_total'}
    assert stages['ddp']['ok'] and stages['ddp']['world_size'] == 1
    md = (tmp_path / 'check' / 'gpu_check.md').read_text()
    assert md in res.stdout and all(f"**{s}**" in md for s in stages), md


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_without_cuda_the_real_check_is_refused(tmp_path):
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'gpu-check', '--out', str(tmp_path / 'c')], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and 'gpu-check needs a CUDA GPU' in res.stderr and '--dry-run' in res.stderr, res.stderr
    assert not (tmp_path / 'c').exists()
