"""What makes a CPU step fast (chapters 05, 07c, 08) without changing what it computes: the allocator tuned in every
training process takes no fresh pages after warm-up and gives the same bits; the compiled step is the default,
reproduces on both simulated machines and keeps its kernels in the study's cache; without a C++ compiler a run
trains eager and says so."""
import json, os, resource, subprocess, sys
import pytest
import torch
from moe_study.config import TrainConfig
from moe_study.environment import INDUCTOR_CACHE_ENV, MALLOC_ENV, tune_allocator
from moe_study.model import Decoder
from moe_study.studies import get_preset
from moe_study.sweep import run_environ
from moe_study.trainer import make_optimizer, read_metrics, step_function, train_step
from test_reproducibility import MACHINES, PINNED

CPU, FP32 = torch.device('cpu'), torch.float32


def steps_with_allocator(tuned: bool, n: int = 10, warmup: int = 3):
    "Minor faults per step after `warmup`, the losses and the final weights of `n` eager steps of the cpu study's MoE."
    tune_allocator(tuned)
    torch.manual_seed(0)
    model = Decoder(get_preset('cpu').model, seed=0)
    opt = make_optimizer(model, TrainConfig(lr=1e-3))
    step, _ = step_function(model, False, CPU, FP32)
    batch = torch.randint(0, model.cfg.vocab_size, (32, 129), generator=torch.Generator().manual_seed(0))
    faults, losses = [], []
    for i in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        o, _ = train_step(model, step, opt, batch[:, :-1], batch[:, 1:], 1e-3, 1.0)
        if i >= warmup: faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        losses.append(o.loss.item())
    return faults, losses, [p.detach().clone() for p in model.parameters()]


def test_a_warm_step_takes_no_fresh_pages_and_the_allocator_changes_no_bits():
    try:
        assert tune_allocator(False), "this test needs glibc"
        default = steps_with_allocator(False)
        tuned = steps_with_allocator(True)
    finally: tune_allocator(True)                      # as conftest's pin_kernels left it
    # steady state: no fresh pages a step (a step may still extend the heap once, in a process as old as pytest's),
    # against thousands a step untuned
    assert sorted(tuned[0])[len(tuned[0]) // 2] < 64 and sum(tuned[0]) < 0.2 * sum(default[0]), (tuned[0], default[0])
    assert tuned[1] == default[1]
    assert all(torch.equal(a, b) for a, b in zip(tuned[2], default[2]))


def test_every_run_a_study_starts_tunes_its_allocator_before_its_first_allocation():
    environ = run_environ()
    assert {k: environ[k] for k in MALLOC_ENV} == MALLOC_ENV


def train(runs, *extra, machine='avx2', **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in PINNED}
    env.update(MACHINES[machine], **env_extra)
    r = subprocess.run([sys.executable, '-m', 'moe_study', 'train', '--preset', 'smoke', '--variant', 'moe', '--seed', '0',
                        '--runs-dir', str(runs), '--quiet', *extra], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = runs.glob('smoke*/moe/seed0')
    return run, r.stderr


@pytest.mark.long
def test_a_compiled_run_reproduces_on_both_machines_and_compiles_into_the_study_cache(tmp_path):
    runs = {m: train(tmp_path / m, '--set', 'train.compile=true', machine=m)[0] for m in MACHINES}
    configs = {m: json.loads((run / 'config.json').read_text()) for m, run in runs.items()}
    assert all(c['compiled'] for c in configs.values())
    assert read_metrics(runs['plain'], timing=False) == read_metrics(runs['avx2'], timing=False)
    env = configs['avx2']['environment']
    assert env['compiler'] and (env['machine'] != 'x86_64' or env['compiler'].endswith('-march=x86-64-v3'))
    cache = os.environ[INDUCTOR_CACHE_ENV]            # conftest pinned: runs/_cache/inductor/moe_study-portable-avx2
    assert '_cache' in cache and any(os.scandir(cache))


def test_without_a_cpp_compiler_a_compiled_run_trains_eager_and_says_so_once(tmp_path):
    run, stderr = train(tmp_path, '--set', 'train.compile=true', CXX='/nonexistent/g++')
    assert stderr.count("training eager, not compiled: inductor found no C++ compiler") == 1, stderr[-2000:]
    config = json.loads((run / 'config.json').read_text())
    assert config['compiled'] is False and config['environment']['compiler'] is None
    assert json.loads((run / 'summary.json').read_text())['status'] == 'complete'
