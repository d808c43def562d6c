"""The portable kernel path (chapter 07c): the same run gives the same bits on machines whose CPUs dispatch to
different kernels, each run records where it computed, and a run resumed elsewhere says so."""
import json, os, subprocess, sys
import pytest
from moe_study.environment import KERNELS_ENV
from moe_study.trainer import read_metrics

# two machines as torch sees them: one whose ATen kernels have no vector instructions, one with AVX2 (and MKL and
# oneDNN held to AVX2), as on a laptop without AVX-512
MACHINES = {'plain': {'ATEN_CPU_CAPABILITY': 'default'},
            'avx2': {'ATEN_CPU_CAPABILITY': 'avx2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2', 'ONEDNN_MAX_CPU_ISA': 'AVX2'}}
PINNED = ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA', 'MKL_DYNAMIC', 'OMP_DYNAMIC', 'MKL_ENABLE_INSTRUCTIONS')

def train(runs, machine: str, mode: str, *extra):
    env = {k: v for k, v in os.environ.items() if k not in PINNED}     # this process's own pins removed
    env.update(MACHINES[machine]); env[KERNELS_ENV] = mode
    r = subprocess.run([sys.executable, '-m', 'moe_study', 'train', '--preset', 'smoke', '--variant', 'moe', '--seed', '0',
                        '--runs-dir', str(runs), '--quiet', *extra], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return runs / 'smoke' / 'moe' / 'seed0'

@pytest.mark.long
def test_portable_mode_gives_the_same_bits_on_both_machines(tmp_path):
    runs = {(m, mode): train(tmp_path / f"{m}_{mode}", m, mode) for m in MACHINES for mode in ('portable', 'native')}
    metrics = {k: read_metrics(run, timing=False) for k, run in runs.items()}
    assert metrics['plain', 'portable'] == metrics['avx2', 'portable']
    assert metrics['plain', 'native'] != metrics['avx2', 'native']            # what the pins are for
    env = {k: json.loads((run / 'config.json').read_text())['environment'] for k, run in runs.items()}
    assert env['plain', 'portable']['cpu_capability'] == env['avx2', 'portable']['cpu_capability'] == 'AVX2'
    assert env['plain', 'native']['cpu_capability'] == 'DEFAULT' and env['plain', 'native']['kernels'] == 'native'
    assert env['plain', 'portable']['mkl_branch'].endswith(',STRICT') and env['plain', 'portable']['threads'] == 1
    summary = json.loads((runs['avx2', 'portable'] / 'summary.json').read_text())
    assert summary['environment_changes'] == [] and 'ATen AVX2' in summary['environment']

def test_a_run_resumed_on_another_kernel_path_says_so(tmp_path):
    run = train(tmp_path, 'plain', 'native', '--until', '10')
    train(tmp_path, 'avx2', 'native')
    changes = json.loads((run / 'config.json').read_text())['environment_changes']
    assert len(changes) == 1 and changes[0]['step'] == 10
    assert changes[0]['changed']['cpu_capability'] == ['DEFAULT', 'AVX2'] and 'threads' not in changes[0]['changed']
    assert json.loads((run / 'summary.json').read_text())['environment_changes'] == changes
    events = [r for r in read_metrics(run) if r['split'] == 'environment']
    assert events == [{'step': 10, 'split': 'environment', **changes[0]}]

def test_an_unknown_kernel_mode_is_refused():
    r = subprocess.run([sys.executable, '-m', 'moe_study', 'params', '--preset', 'smoke'], capture_output=True, text=True,
                       env={**os.environ, KERNELS_ENV: 'fastest'})
    assert r.returncode == 2 and "MOE_STUDY_KERNELS='fastest': must be one of portable, compatible, native" in r.stderr
