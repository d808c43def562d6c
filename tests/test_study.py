"""The smoke-preset study end to end: sweep through papermill, report, skip, resume, failure."""
import json, os, shutil, socket, subprocess, sys, time, urllib.request

import pytest

from conftest import PAPERMILL, ROOT, load_json_strict, section_headings, stories


def study(tmp, *extra):
    return subprocess.run([sys.executable, '-m', 'moe_study', 'study', '--preset', 'smoke', '--seeds', '0', '1',
                           '--runs-dir', str(tmp / 'runs'), '--report-dir', str(tmp / 'report'), *extra],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'MOE_STUDY_REFRESH_S': '0.2'})


@pytest.fixture(scope='session')
def first_pass(tmp_path_factory):
    "The smoke study through papermill, seeds 0 and 1: (folder of runs/ and report/, the command's result). Read it."
    tmp = tmp_path_factory.mktemp('study')
    return tmp, study(tmp)


@pytest.fixture
def study_copy(first_pass, tmp_path):
    "A private copy of the first pass's runs and report, for a test that changes them."
    tmp, _ = first_pass
    for name in ('runs', 'report'): shutil.copytree(tmp / name, tmp_path / name)
    return tmp_path


SMOKE_STUDY = pytest.mark.xdist_group('smoke_study')      # the tests that read first_pass: one worker builds it


@SMOKE_STUDY
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
                 'the Switch load-balancing loss', 'resizing the FFN hidden size'):
        assert text in html, text
    sections = section_headings(html)           # the answer first; then the recipe; no section a study lacks
    assert sections[:2] == ['What we found', 'The recipe'] and 'Incomplete and failed runs' not in sections, sections
    assert 'Does the answer survive tuning?' not in sections and 'nothing to show' not in html
    assert 'data:image/png' in html.split('What we found', 1)[1].split('The recipe', 1)[0]       # the carrying figure
    assert '<details><summary>moe (seed 0)</summary><blockquote>' in html          # samples folded
    assert 'import ' not in html.split('<body', 1)[1].split('Fairness audit')[0]      # no input cells
    results = load_json_strict(report / 'results.json')
    assert set(results['variants']) == {'moe', 'dense_active', 'dense_total'}
    gap = results['gaps']['matched_active']
    assert gap['seeds'] == [0, 1] and len(gap['values']) == 2 and gap['ci95'][0] <= gap['mean'] <= gap['ci95'][1]
    assert results['fair'] and results['failed'] == [] and results['incomplete'] == []
    boot = gap['bootstrap']                     # seeds and validation sequences resampled together
    assert boot['seeds'] == [0, 1] and boot['sequences'] > 10 and boot['ci95'][0] < boot['ci95'][1] and boot['se'] > 0
    assert gap['confirmation']['seeds'] == [0, 1]           # smoke has no design seeds: every seed is fresh
    assert 'What the fresh seeds say' in html and '95% bootstrap (se)' in html and '|mean| > 2 std' not in html
    assert (report / 'routing_moe.png').exists() and (tmp / 'runs' / 'smoke' / 'study.json').exists()


@SMOKE_STUDY
def test_rerun_executes_nothing(first_pass):
    tmp, _ = first_pass
    html = tmp / 'report' / 'smoke' / 'index.html'
    before = html.stat().st_mtime_ns
    res = study(tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    assert '0 run(s) executed, 6 already complete' in res.stdout and 'not re-rendered' in res.stdout
    assert html.stat().st_mtime_ns == before


@SMOKE_STUDY
def test_runs_write_tensorboard_events_and_the_study_shows_each_run_live(first_pass):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tmp, res = first_pass
    run = tmp / 'runs' / 'smoke' / 'moe' / 'seed0'
    acc = EventAccumulator(str(run), size_guidance={'scalars': 0}); acc.Reload()     # TensorBoard's own reader
    tags = set(acc.Tags()['scalars'])
    assert {'train/loss', 'train/lr', 'train/tokens_per_s', 'train/mfu', 'train/lb_loss', 'train/z_loss', 'val/loss', 'val/bpb',
            'routing/layer0/max_vio', 'routing/layer0/entropy', 'routing/layer0/load/expert0', 'routing/layer1/load/expert3'} <= tags, tags
    records = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars('train/loss')] == \
           [(r['step'], round(r['loss'], 5)) for r in records if r['split'] == 'train']          # the same curve as the record
    assert 'moe seed 0: ' in res.stderr and ' steps, loss ' in res.stderr, res.stderr[-2000:]   # each running run, live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0)); return s.getsockname()[1]


@SMOKE_STUDY
def test_board_serves_every_variant_and_seed_of_the_study(first_pass):
    tmp, _ = first_pass
    port = free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'moe_study', 'board', '--preset', 'smoke', '--runs-dir', str(tmp / 'runs'),
                             '--port', str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, names = time.time() + 90, []
        while time.time() < deadline and len(names) < 6:
            try: names = json.loads(urllib.request.urlopen(f'http://localhost:{port}/data/runs', timeout=5).read())
            except OSError: time.sleep(1)
        assert sorted(names) == [f'{v}/seed{s}' for v in ('dense_active', 'dense_total', 'moe') for s in (0, 1)], names
    finally:
        proc.terminate(); proc.wait(30)


@SMOKE_STUDY
def test_eval_on_a_held_out_corpus_adds_its_paired_gaps_to_the_report(first_pass):
    tmp, _ = first_pass
    corpus = tmp / 'other.txt'
    corpus.write_text('\n'.join(stories(80)))
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'eval', '--preset', 'smoke', '--data', str(corpus),
                          '--runs-dir', str(tmp / 'runs'), '--report-dir', str(tmp / 'report')],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'moe seed 1: loss ' in res.stdout and 'matched_active (dense_active − moe)' in res.stdout, res.stdout
    results = load_json_strict(tmp / 'report' / 'smoke' / 'results.json')
    (name, held), = results['held_out'].items()
    assert name.startswith('other-') and held['runs'] == 6 and held['corpus'] == str(corpus.resolve())
    assert held['gaps']['matched_active']['seeds'] == [0, 1] and held['gaps']['matched_active']['bootstrap'] is not None
    assert f'Held-out corpus: {name}' in section_headings((tmp / 'report' / 'smoke' / 'index.html').read_text())
    bad = subprocess.run([sys.executable, '-m', 'moe_study', 'eval', '--preset', 'smoke', '--data', '',
                          '--runs-dir', str(tmp / 'runs'), '--report-dir', str(tmp / 'report')], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and 'an empty path (an unset shell variable?)' in bad.stderr and 'Traceback' not in bad.stderr


@pytest.mark.skipif(__import__('importlib').util.find_spec('lm_eval') is None, reason="needs moe_study[eval]")
@SMOKE_STUDY
def test_eval_harness_scores_a_local_corpus_offline_and_refuses_what_needs_a_download(first_pass):
    tmp, _ = first_pass
    corpus = tmp / 'harness.jsonl'
    corpus.write_text(''.join(json.dumps({'text': t}) + '\n' for t in stories(20)))
    run = tmp / 'runs' / 'smoke' / 'dense_active' / 'seed1'
    cmd = [sys.executable, '-m', 'moe_study', 'eval', '--preset', 'smoke', '--runs-dir', str(tmp / 'runs'), '--run', str(run)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TRANSFORMERS_'))}     # the command sets offline itself
    res = subprocess.run([*cmd, '--harness', 'moe_study_bpb', '--data', str(corpus)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f'{run}: moe_study_bpb ' in res.stdout and 'bits_per_byte ' in res.stdout, res.stdout
    assert json.loads((run / 'heldout' / 'harness' / 'moe_study_bpb-harness.json').read_text())['metrics']['bits_per_byte'] > 0
    res = subprocess.run([*cmd, '--harness', 'wikitext'], cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and 'needs data that is not available offline' in res.stderr and 'Traceback' not in res.stderr, res.stderr[-2000:]


@SMOKE_STUDY
def test_a_study_mixing_kernel_paths_is_flagged_or_refused(first_pass, tmp_path):
    "Runs from two kernel paths (chapter 07c): the report warns and lists them; a study declaring exact pairing refuses."
    import dataclasses, shutil
    from moe_study.studies import get_preset
    from moe_study.sweep import ReportRefused, render_report
    tmp, _ = first_pass
    runs = tmp_path / 'runs'
    shutil.copytree(tmp / 'runs', runs)
    config = runs / 'smoke' / 'dense_active' / 'seed1' / 'config.json'
    c = json.loads(config.read_text())
    assert c['environment']['cpu_capability'] == 'AVX2'                    # the study pinned its runs
    c['environment'] = {**c['environment'], 'cpu_capability': 'AVX512', 'mkl_branch': 'OFF'}  # as if trained elsewhere
    config.write_text(json.dumps(c))
    smoke = get_preset('smoke')
    out, _ = render_report(smoke, runs, tmp_path / 'report')
    html = (out / 'index.html').read_text()
    assert 'Warning: these runs did not all compute on one kernel path' in html and '⚠ mixed' in html
    assert 'ATen AVX512, MKL OFF, 1 thread, torch' in html and 'dense_active/seed1' in html
    with pytest.raises(ReportRefused, match='compute environment: .*ATen AVX512.*: dense_active/seed1'):
        render_report(dataclasses.replace(smoke, exact_pairing=True), runs, tmp_path / 'exact')


@SMOKE_STUDY
def test_deleting_a_summary_reruns_only_that_run_and_failures_are_reported(study_copy):
    tmp = study_copy
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
    results = load_json_strict(tmp / 'report' / 'smoke' / 'results.json')
    assert [(f['variant'], f['seed']) for f in results['failed']] == [('moe', 0)]
    assert [(i['variant'], i['seed']) for i in results['incomplete']] == [('moe', 0)]
    assert results['gaps']['matched_active']['seeds'] == [1]                 # only complete pairs count
    assert 'Incomplete and failed runs' in (tmp / 'report' / 'smoke' / 'index.html').read_text()


def test_unknown_variant_for_the_study(tmp_path):
    res = study(tmp_path, '--variants', 'moe', 'sparse')
    assert res.returncode == 2 and "unknown variant 'sparse' in study 'smoke'" in res.stderr


@SMOKE_STUDY
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


# --- a study is a declaration --------------------------------------------------------------------------------

@pytest.mark.long
def test_a_new_variant_is_one_declaration(tmp_path):
    "Declare an 8-expert MoE beside the reference: parameters, runs, analysis, figures and report pick it up."
    import dataclasses
    from moe_study.studies import Comparison, Variant, get_preset
    from moe_study.params import variant_table
    from moe_study.sweep import run_study
    smoke = get_preset('smoke')
    study = dataclasses.replace(
        smoke, name='smoke_e8', variants=(smoke.variant('moe'), Variant('e8', "8 experts, top-2", {'n_experts': 8})),
        comparisons=(Comparison('e8_vs_moe', 'e8', 'moe', "8 experts are worse"),), published={})
    assert [r['n_experts'] for r in variant_table(study)] == [4, 8]
    out = run_study(study, seeds=[0], runs=tmp_path / 'runs', reports=tmp_path / 'report', progress=False)
    assert not out.failed and out.report_error is None, (out.failed, out.report_error)
    assert (tmp_path / 'runs' / 'smoke_e8' / 'e8' / 'seed0' / 'summary.json').exists()
    config = json.loads((tmp_path / 'runs' / 'smoke_e8' / 'e8' / 'seed0' / 'config.json').read_text())
    assert config['identity']['model']['n_experts'] == 8 and config['rule'] == 'n_experts=8'
    report = tmp_path / 'report' / 'smoke_e8'
    results = load_json_strict(report / 'results.json')
    assert list(results['variants']) == ['moe', 'e8'] and list(results['gaps']) == ['e8_vs_moe'] and results['fair']
    assert (report / 'routing_e8.png').exists() and (report / 'routing_moe.png').exists()
    html = (report / 'index.html').read_text()
    assert 'e8_vs_moe' in html and '8 experts, top-2' in html and 'n_experts=8' in html


def test_a_one_variant_study_renders_without_gaps(tmp_path):
    import dataclasses
    from moe_study.studies import get_preset
    from moe_study.sweep import run_study
    smoke = get_preset('smoke')
    alone = dataclasses.replace(smoke, name='smoke_alone', variants=(smoke.variant('dense_active'),),
                                comparisons=(), published={})
    out = run_study(alone, seeds=[0], runs=tmp_path / 'runs', reports=tmp_path / 'report', progress=False)
    assert out.report_error is None and not out.failed, out.report_error
    results = load_json_strict(tmp_path / 'report' / 'smoke_alone' / 'results.json')
    assert list(results['variants']) == ['dense_active'] and results['gaps'] == {}
    html = (tmp_path / 'report' / 'smoke_alone' / 'index.html').read_text()
    assert section_headings(html)[0] == 'What we found' and 'declares no comparison' in html   # its answer: the losses
    assert 'Routing' not in section_headings(html) and 'nothing to show' not in html           # absent, not announced


def render_in_process(study, tmp, seeds):
    "Train every run in this process (papermill's path is tested above), then render the report."
    from moe_study.sweep import render_report
    from moe_study.trainer import train
    for v in study.variant_names:
        for seed in seeds:
            train(study, v, seed, out_dir=tmp / 'runs' / study.name / v / f'seed{seed}', progress=False)
    render_report(study, tmp / 'runs', tmp / 'report')


def test_declared_text_reaches_the_page_escaped(tmp_path):
    "A shared study file's text is text on the page: no script, no element, from any field a study declares."
    import dataclasses
    from moe_study.studies import get_preset
    smoke = get_preset('smoke')
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>'
    hostile = dataclasses.replace(
        smoke, name='smoke_evil', description=f'desc {evil}', question=f'q {evil}', design_search=f'search {evil}',
        design_seeds=(0,), variants=tuple(dataclasses.replace(v, description=f'{v.description} {evil}') for v in smoke.variants),
        comparisons=tuple(dataclasses.replace(c, positive=f'{c.positive} {evil}') for c in smoke.comparisons))
    smoke_steps = dataclasses.replace(hostile, train=hostile.train.replace(max_steps=6))
    render_in_process(smoke_steps, tmp_path, seeds=(0, 1))
    page = (tmp_path / 'report' / 'smoke_evil' / 'index.html').read_text()
    assert '<script>alert' not in page and '<img src=x' not in page
    assert page.count('&lt;script&gt;alert(1)&lt;/script&gt;') >= 5          # title, question, search, gaps, variants


@pytest.mark.long
def test_an_equal_resources_study_end_to_end(tmp_path):
    "A small strictly-equal-resources study: equal compute, reuse against fresh data, the rate sweep in the report."
    from moe_study.config import ModelConfig, TrainConfig
    from moe_study.studies import equal_resources, get_preset
    smoke = get_preset('smoke')
    study = equal_resources('smoke_equal', "a smoke-sized equal-resources study",
                            ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=512, context_len=64),
                            smoke.data, TrainConfig(batch_size=8, max_steps=12, warmup_steps=2, eval_every=6,
                                                    log_every=3, checkpoint_every=6, sample_tokens=8, threads=1,
                                                    unique_tokens=12 * 8 * 64, compile=False),   # eager: many shapes
                            (0.3, 0.6), moe={'n_shared_experts': 1, 'renormalize': False}, match_multiple=4)
    render_in_process(study, tmp_path, seeds=(0, 1))
    configs = {v: json.loads((tmp_path / 'runs' / 'smoke_equal' / v / 'seed0' / 'config.json').read_text())
               for v in study.variant_names}
    dense = configs['dense']
    for v, c in configs.items():     # the reference's compute, within half a step
        assert abs(c['train_flops'] - dense['train_flops']) <= c['flops_per_token'] * c['tokens_per_step'] / 2, v
    assert dense['epochs'] == 1.0 and configs['moe_r30']['epochs'] > configs['moe_r60']['epochs'] > 1
    assert configs['moe_r30_fresh']['epochs'] == 1.0
    assert configs['moe_r30']['identity']['budget']['unique_tokens'] == 12 * 8 * 64
    assert configs['moe_r30_fresh']['identity']['budget']['unique_tokens'] == configs['moe_r30']['identity']['steps'] * 8 * 64
    report = tmp_path / 'report' / 'smoke_equal'
    results = load_json_strict(report / 'results.json')
    assert results['fair'], results['audit']
    assert [r['variant'] for r in results['activation_rates']] == study.variant_names
    assert set(results['gaps']) == {g.name for g in study.comparisons}
    assert (report / 'activation_rate.png').exists()
    ref = results['reference']            # where the dense reference sits against Chinchilla's ~20 tokens per parameter
    assert ref['variant'] == 'dense' and ref['tokens'] == 12 * 8 * 64 and ref['compute_optimal_tokens_per_param'] == 20
    assert [r['lr'] for r in results['activation_rates']] == [study.train.lr] * len(study.variant_names)
    html = (report / 'index.html').read_text()
    assert section_headings(html)[0] == 'What we found'                           # answer first, its figure next
    assert html.index('What we found') < html.index('against activation rate') < html.index('Fairness audit')
    assert 'per non-embedding parameter' in html and 'What the paper found' in html and 'unique data' in html


@pytest.mark.long
def test_an_isoflop_study_end_to_end(tmp_path):
    "A small IsoFLOP study: every run spends its budget; curves, optima and the law fit in the report."
    from moe_study.config import ModelConfig, TrainConfig
    from moe_study.studies import get_preset, isoflop_sweep
    study = isoflop_sweep('smoke_iso', "a smoke-sized IsoFLOP study",
                          ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, d_ff=64, context_len=64,
                                      ffn='moe', n_experts=4, top_k=2, d_expert=32),
                          get_preset('smoke').data, TrainConfig(batch_size=8, warmup_steps=3, eval_every=40, log_every=10,
                                                                checkpoint_every=100, sample_tokens=8, threads=1,
                                                                compile=False),   # eager: 18 shapes
                          (1e10, 2e10, 4e10), ((4, 2),), widths=((16, 24, 32),) * 3, match_multiple=4)
    render_in_process(study, tmp_path, seeds=(0,))
    for v in study.variants:
        c = json.loads((tmp_path / 'runs' / 'smoke_iso' / v.name / 'seed0' / 'config.json').read_text())
        assert abs(c['train_flops'] / v.budget_flops - 1) <= 0.02, v.name
        assert c['identity']['budget'] == {'rule': 'fixed_flops', 'budget_flops': v.budget_flops}
    report = tmp_path / 'report' / 'smoke_iso'
    assert (report / 'isoflop_curves.png').exists() and (report / 'isoflop_optima.png').exists()
    assert (report / 'isoflop_law.png').exists()
    iso = load_json_strict(report / "results.json")["isoflop"]
    assert iso['budgets'] == [1e10, 2e10, 4e10] and len(iso['optima']) == 3 * 2
    assert all(len(o['loss_ci95']) == 2 for o in iso['optima'] if o['interior'])   # bootstrapped intervals
    law = iso['law']                      # fitted on the two smaller budgets, asked for the largest's optima
    assert (law['n_fit'], law['n_held_out']) == (12, 6) and [p['sparsity'] for p in law['prediction']] == [0.0, 0.5]
    assert set(iso['law_fitters']) == {'lbfgs'}
    html = (report / 'index.html').read_text()
    assert section_headings(html)[0] == 'What we found'                           # answer first, its figure next
    assert html.index('What we found') < html.index('Every run spends its own budget') < html.index('Fairness audit')
    assert 'predicts the best loss' in html and 'The law (eq. 6)' in html and 'What the paper found' in html
    assert 'held out' in html and 'N*_active' in html


def test_data_and_set_on_the_command_line_make_a_new_study(tmp_path):
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n\n'.join(stories(600)))
    args = ('--preset', 'smoke', '--data', str(corpus), '--set', 'data.val_fraction=0.05', '--set', 'model.top_k=1')
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'train', *args, '--variant', 'moe', '--runs-dir',
                          str(tmp_path / 'runs'), '--quiet'], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    [study_dir] = [p for p in (tmp_path / 'runs').iterdir() if p.name != '_cache']
    assert study_dir.name.startswith('smoke-') and study_dir.name != 'smoke'
    identity = json.loads((study_dir / 'moe' / 'seed0' / 'config.json').read_text())['identity']
    assert identity['preset'] == study_dir.name and identity['model']['top_k'] == 1
    assert identity['data']['source'] == 'files' and identity['data']['path'] == str(corpus)
    assert identity['data']['train_docs'] is None                      # every document of the user's corpus
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'params', *args, '--json'], cwd=ROOT, capture_output=True, text=True)
    assert [r['top_k'] for r in json.loads(res.stdout)] == [1, None, None]


def test_papermill_data_and_overrides(tmp_path):
    corpus = tmp_path / 'corpus.jsonl'
    corpus.write_text('\n'.join(json.dumps({'text': s}) for s in stories(600)))
    res = subprocess.run([str(PAPERMILL), 'nbs/train.ipynb', str(tmp_path / 'out.ipynb'), '-p', 'preset', 'smoke',
                          '-p', 'variant', 'moe', '-p', 'seed', '1', '-p', 'data', str(corpus), '-p', 'runs_dir',
                          str(tmp_path / 'runs'), '-y', 'overrides: {model.n_experts: 8, data.val_fraction: 0.05, max_steps: 20}'],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    [study_dir] = [p for p in (tmp_path / 'runs').iterdir() if p.name != '_cache']
    run = study_dir / 'moe' / 'seed1'
    identity = json.loads((run / 'config.json').read_text())['identity']
    assert identity['model']['n_experts'] == 8 and identity['steps'] == 20 and identity['data']['source'] == 'files'
    assert json.loads((run / 'summary.json').read_text())['status'] == 'complete'
    assert 'changed from smoke' in (tmp_path / 'out.ipynb').read_text()
