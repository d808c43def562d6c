"""One run on several processes: `torchrun --nproc_per_node 2 -m moe_study train` (gloo on the CPU) trains what one
process trains, writes the run directory once, resumes from its checkpoint, and refuses a batch it cannot split."""
import json, os, subprocess
from pathlib import Path

import pytest

from moe_study.trainer import read_metrics, train

from conftest import BIN

TORCHRUN = BIN / 'torchrun'


def torchrun(n: int, *args, root: Path):
    cmd = [str(TORCHRUN), '--nproc_per_node', str(n), '-m', 'moe_study', 'train', '--preset', 'smoke', '--quiet', *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'MOE_STUDY_ROOT': str(root)})


pytestmark = pytest.mark.xdist_group('ddp')          # one worker trains the runs the tests compare


@pytest.fixture(scope='session')
def runs(tmp_path_factory):
    "The smoke MoE, seed 0: trained by two processes (its token cache built by rank 0 alone), and by one."
    root = tmp_path_factory.mktemp('ddp')
    res = torchrun(2, '--variant', 'moe', '--runs-dir', str(root / 'two'), root=root)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count('best val loss') == 1                            # rank 0 reports, once
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MOE_STUDY_ROOT', str(root))
        train('smoke', 'moe', 0, out_dir=root / 'one', progress=False)
    return root


def test_two_processes_train_what_one_process_trains(runs):
    one, two = read_metrics(runs / 'one', timing=False), read_metrics(runs / 'two' / 'smoke' / 'moe' / 'seed0', timing=False)
    assert [(r['split'], r['step']) for r in one] == [(r['split'], r['step']) for r in two]   # written once, in order
    final = lambda records: [r for r in records if r['split'] == 'val'][-1]['loss']
    assert abs(final(one) - final(two)) < 1e-4, (final(one), final(two))
    for a, b in zip(one, two):
        assert abs(a['loss'] - b['loss']) < 1e-4 and abs(a.get('lb_loss', 0) - b.get('lb_loss', 0)) < 1e-4
    run = runs / 'two' / 'smoke' / 'moe' / 'seed0'
    assert json.loads((run / 'config.json').read_text())['world_size'] == 2
    assert json.loads((run / 'summary.json').read_text())['status'] == 'complete'


def test_a_two_process_run_resumes_from_its_checkpoint(runs):
    out = runs / 'resumed'
    res = torchrun(2, '--variant', 'moe', '--runs-dir', str(out), '--until', '10', root=runs)
    assert res.returncode == 0 and 'stopped after step 10' in res.stdout, res.stderr[-3000:]
    res = torchrun(2, '--variant', 'moe', '--runs-dir', str(out), root=runs)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (read_metrics(out / 'smoke' / 'moe' / 'seed0', timing=False)
            == read_metrics(runs / 'two' / 'smoke' / 'moe' / 'seed0', timing=False))


def test_a_batch_that_does_not_split_is_refused(runs):
    res = torchrun(3, '--variant', 'dense_active', '--runs-dir', str(runs / 'three'), root=runs)   # batch_size 8
    assert res.returncode != 0 and 'batch_size=8 does not split over 3 processes' in res.stderr
    assert not (runs / 'three' / 'smoke' / 'dense_active' / 'seed0' / 'metrics.jsonl').exists()


def test_a_compiled_two_process_run_trains(runs):
    "DDP's model compiled (torch.compile over the module, its MoE's functional all-reduce in the graph), over gloo."
    res = torchrun(2, '--variant', 'moe', '--runs-dir', str(runs / 'compiled'), '--set', 'compile=true', '--set', 'max_steps=6',
                   '--set', 'warmup_steps=1', '--set', 'eval_every=3', '--set', 'sample_tokens=0', root=runs)
    assert res.returncode == 0, res.stderr[-3000:]
    run = next((runs / 'compiled').glob('smoke-*/moe/seed0'))
    config = json.loads((run / 'config.json').read_text())
    assert config['world_size'] == 2 and config['compiled'] is True
    train_records = [r for r in read_metrics(run) if r['split'] == 'train']
    assert train_records[-1]['step'] == 6 and all(0 < r['lb_loss'] < 10 for r in train_records)
