"""Training end to end: papermill, the command line, kill-and-resume, and what must stop a run."""
import json, random, re, signal, subprocess, sys, time

import pytest
import torch

from conftest import PAPERMILL, ROOT, command as cli
from moe_study.studies import study_with
from moe_study.model import Decoder
from moe_study.checkpoint import TrainingError, state_digest
from moe_study.trainer import read_metrics, train


def test_papermill_run_writes_a_complete_run_directory(tmp_path):
    # the README's form, from the repository root, with an output notebook
    res = subprocess.run([str(PAPERMILL), 'nbs/train.ipynb', str(tmp_path / 'out.ipynb'), '-p', 'preset', 'smoke',
                          '-p', 'variant', 'dense_active', '-p', 'seed', '1', '-p', 'runs_dir', str(tmp_path / 'runs')],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / 'runs' / 'smoke' / 'dense_active' / 'seed1'
    files = sorted(p.name for p in run.iterdir())
    assert [f for f in files if not f.startswith('events.out.tfevents.')] == [
        '.lock', 'checkpoint.pt', 'config.json', 'metrics.jsonl', 'summary.json', 'val_sequences_best.npz', 'val_sequences_final.npz']
    assert len(files) == 8                                          # and its TensorBoard events
    summary = json.loads((run / 'summary.json').read_text())
    assert summary['status'] == 'complete' and summary['variant'] == 'dense_active' and summary['seed'] == 1
    assert len(summary['samples']) == 3
    executed = json.loads((tmp_path / 'out.ipynb').read_text())
    text = json.dumps(executed['cells'])
    assert 'best val loss' in text and 'dense model: no router' in text
    assert len(res.stdout) + len(res.stderr) < 5_000, res.stdout[-500:] + res.stderr[-500:]   # no notebook on the terminal


def test_the_parameters_cell_names_every_preset():
    "nbs/train.ipynb's `preset` parameter lists the presets the registry holds, no more and no fewer."
    from moe_study.studies import STUDIES
    cells = json.loads((ROOT / 'nbs' / 'train.ipynb').read_text())['cells']
    params = next(''.join(c['source']) for c in cells if 'parameters' in c['metadata'].get('tags', []))
    listed = re.search(r"preset = 'cpu' +# a preset \(([^)]*)\)", params).group(1)
    assert listed.split(' | ') == list(STUDIES), listed


def test_papermill_unknown_variant_lists_the_valid_ones(tmp_path):
    res = subprocess.run([str(PAPERMILL), 'nbs/train.ipynb', str(tmp_path / 'out.ipynb'), '-p', 'variant', 'sparse',
                          '-p', 'runs_dir', str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    assert "unknown variant 'sparse' in study 'cpu'; valid variants: moe, dense_active, dense_total" in res.stderr


KILLED = {'log_every': 1, 'max_steps': 10_000}        # a run far longer than the test lets it train: never finished when killed
UNTIL = 40                                            # where the killed run, resumed, and the uninterrupted one stop


def test_sigkill_at_a_random_step_then_rerun_is_bit_identical(tmp_path):
    runs = tmp_path / 'runs'
    cmd = [sys.executable, '-m', 'moe_study', 'train', '--preset', 'smoke', '--variant', 'moe', '--seed', '0',
           '--runs-dir', str(runs), '--quiet', *(a for k, v in KILLED.items() for a in ('--set', f'{k}={v}'))]
    run = runs / study_with('smoke', overrides=KILLED).name / 'moe' / 'seed0'     # --set: its own study
    kill_at = random.Random().randint(11, 28)          # after the first checkpoint (step 10), before the next but one
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / 'metrics.jsonl').exists() and any(r['step'] >= kill_at for r in read_metrics(run)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    killed_at = max(r['step'] for r in read_metrics(run))
    assert kill_at <= killed_at < KILLED['max_steps'] and not (run / 'summary.json').exists()
    res = subprocess.run([*cmd, '--until', str(max(UNTIL, killed_at + 1))], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    uninterrupted = tmp_path / 'whole'
    assert train('smoke', 'moe', 0, overrides=KILLED, out_dir=uninterrupted, until=max(UNTIL, killed_at + 1), progress=False) is None
    assert read_metrics(run, timing=False) == read_metrics(uninterrupted, timing=False), f"killed at step {killed_at}"
    resumed, whole = (torch.load(r / 'checkpoint.pt', weights_only=True) for r in (run, uninterrupted))
    same = ('step', 'model', 'optimizer', 'best')          # not the wall time, nor the process's global RNG (batches have their own)
    assert [state_digest(resumed[k]) for k in same] == [state_digest(whole[k]) for k in same]    # bit for bit
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run), size_guidance={'scalars': 0}); acc.Reload()      # the killed and the resumed writer
    assert [e.step for e in acc.Scalars('train/loss')] == [r['step'] for r in read_metrics(run) if r['split'] == 'train']
    assert [e.step for e in acc.Scalars('val/loss')] == [r['step'] for r in read_metrics(run) if r['split'] == 'val']


def test_resume_with_another_config_is_refused(tmp_path):
    # a declaration edited between two sessions: same study name, another recipe
    import dataclasses
    from moe_study.studies import get_preset
    smoke = get_preset('smoke')
    out = tmp_path / 'run'
    assert train(smoke, 'moe', 0, out_dir=out, progress=False, until=10) is None
    edited = dataclasses.replace(smoke, train=smoke.train.replace(lr=1e-3))
    with pytest.raises(TrainingError, match=r"refusing to resume .*train.lr: 0.003 -> 0.001"):
        train(edited, 'moe', 0, out_dir=out, progress=False)
    assert torch.load(out / 'checkpoint.pt', weights_only=True)['step'] == 10           # untouched


def test_set_on_the_command_line_is_a_new_study_not_a_resume(tmp_path):
    runs = str(tmp_path)
    assert cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', runs, '--until', '10', '--quiet').returncode == 0
    res = cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', runs, '--quiet', '--until', '5',
              '--set', 'lr=0.001')
    assert res.returncode == 0, res.stderr
    changed = [p.name for p in tmp_path.iterdir() if p.name.startswith('smoke-')]
    assert len(changed) == 1 and (tmp_path / changed[0] / 'moe' / 'seed0' / 'checkpoint.pt').exists()
    assert torch.load(tmp_path / 'smoke' / 'moe' / 'seed0' / 'checkpoint.pt', weights_only=True)['step'] == 10


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / 'run'
    train('smoke', 'dense_active', 0, out_dir=out, progress=False, until=10)
    good = (out / 'checkpoint.pt').read_bytes()
    forward = Decoder.forward
    def poisoned(self, tokens, targets=None):
        o = forward(self, tokens, targets)
        return o._replace(loss=o.loss * float('nan')) if targets is not None else o
    monkeypatch.setattr(Decoder, 'forward', poisoned)
    with pytest.raises(TrainingError, match=r"the loss is nan .* at step 11 .* the checkpoint of step 10 .* is kept and finite"):
        train('smoke', 'dense_active', 0, out_dir=out, progress=False)
    assert (out / 'checkpoint.pt').read_bytes() == good
    assert not (out / 'summary.json').exists()


def test_nan_from_a_huge_learning_rate_exits_nonzero(tmp_path):
    res = cli('train', '--preset', 'smoke', '--variant', 'dense_active', '--runs-dir', str(tmp_path), '--quiet',
              '--set', 'lr=1e6', '--set', 'warmup_steps=0', '--set', 'grad_clip=1e9')
    assert res.returncode == 1 and 'gradient norm nan' in res.stderr and 'lower the learning rate' in res.stderr
    assert not (tmp_path / 'smoke' / 'dense_active' / 'seed0' / 'summary.json').exists()


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    runs = str(tmp_path)
    assert cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', runs, '--until', '10', '--quiet').returncode == 0
    ckpt = tmp_path / 'smoke' / 'moe' / 'seed0' / 'checkpoint.pt'
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    res = cli('train', '--preset', 'smoke', '--variant', 'moe', '--runs-dir', runs, '--quiet')
    assert res.returncode == 1
    assert 'cannot be read' in res.stderr and 'delete it' in res.stderr and 'Traceback' not in res.stderr


def test_train_command_unknown_names(tmp_path):
    res = cli('train', '--preset', 'huge', '--variant', 'moe')
    assert res.returncode == 2 and "unknown preset 'huge'" in res.stderr
    res = cli('train', '--variant', 'dense')
    assert res.returncode == 2 and 'dense_active' in res.stderr


def test_bench_json_has_the_figures():
    res = cli('bench', '--preset', 'smoke', '--steps', '2', '--json')
    assert res.returncode == 0, res.stderr
    b = json.loads(res.stdout)
    for key in ('moe_over_dense_step', 'dense_peak_fraction', 'moe_peak_fraction', 'device'):
        assert key in b
    assert 0 < b['moe_over_dense_step'] < 10 and 0 < b['dense_peak_fraction'] < 2
    assert b['threads'] == 1          # the smoke preset trains with one thread, so the bench measures with one


def test_bench_bad_threads_is_a_clear_error():
    res = cli('bench', '--preset', 'smoke', '--threads', '0')
    assert res.returncode == 2 and 'threads=0: must be None or an integer from 1 to 512' in res.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA: the guard without a host sync is the GPU path')
@pytest.mark.parametrize('ffn', ['dense', 'moe'])
def test_a_training_step_on_cuda_never_syncs_with_the_host(ffn):
    from moe_study.config import ModelConfig, TrainConfig
    from moe_study.trainer import StepGuard, make_optimizer, step_function, to_device, train_step
    device = torch.device('cuda')
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, context_len=32, ffn=ffn,
                      **({'n_experts': 4, 'top_k': 2, 'd_expert': 128} if ffn == 'moe' else {}))
    model = Decoder(cfg, 0).to(device)
    opt, guard = make_optimizer(model, TrainConfig()), StepGuard(device)
    step, _ = step_function(model, False, device, torch.bfloat16)
    batch = torch.randint(0, 256, (4, 33))
    train_step(model, step, opt, *(to_device(t, device) for t in (batch[:, :-1], batch[:, 1:])), 1e-3, 1.0, guard)   # warm
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')                     # any synchronising call raises
    try:
        for _ in range(3):
            train_step(model, step, opt, *(to_device(t, device) for t in (batch[:, :-1], batch[:, 1:])), 1e-3, 1.0, guard)
    finally: torch.cuda.set_sync_debug_mode(0)
    assert guard.check() == 0
