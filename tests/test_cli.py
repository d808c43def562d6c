"""`python -m moe_study` as a user runs it: output formats, exit codes, bad input. The command line's `main` runs in
this process (what `python -m moe_study` runs, without a second of imports each); the last test starts the module."""
import json

import pytest

from conftest import command, in_process as cli
from moe_study.studies import STUDIES
from moe_study.params import count_params, flops_per_token, variant_config


@pytest.mark.parametrize('preset', list(STUDIES))
def test_params_json_lists_every_declared_variant_matched_within_half_a_percent(preset):
    res = cli('params', '--preset', preset, '--json')
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r['variant'] for r in rows] == STUDIES[preset].variant_names
    for r in rows:
        cfg = variant_config(preset, r['variant'])
        c = count_params(cfg)
        assert (r['params_total'], r['params_active'], r['params_embedding']) == (c.total, c.active, c.embedding)
        assert r['flops_per_token'] == flops_per_token(cfg)
        v = STUDIES[preset].variant(r['variant'])
        assert r['matched_to'] == ('total' if v.activation_rate else v.match)
        assert r['matched_to'] is None or abs(r['residual_pct']) <= 0.5


def test_params_json_gives_the_resources_of_an_equal_resources_study():
    rows = {r['variant']: r for r in json.loads(cli('params', '--preset', 'equal_cpu', '--json').stdout)}
    fields = ('params_total_nonembedding', 'params_active_nonembedding', 'activation_rate', 'flops_per_token', 'tokens',
              'epochs', 'train_flops')
    assert all(r[f] is not None for r in rows.values() for f in fields)
    dense = rows['dense']
    assert (dense['activation_rate'], dense['epochs']) == (1.0, 1.0)
    for name, r in rows.items():
        assert r['train_flops'] == r['flops_per_token'] * r['tokens']
        assert abs(r['train_flops'] / dense['train_flops'] - 1) <= 0.01, name
        assert abs(r['activation_rate'] - r['params_active_nonembedding'] / r['params_total_nonembedding']) < 1e-6
    assert rows['moe_r17']['epochs'] == round(rows['moe_r17']['tokens'] / dense['tokens'], 6) > 2
    assert rows['moe_r17_fresh']['epochs'] == 1.0


def test_params_json_gives_the_axes_and_budget_of_an_isoflop_study():
    rows = json.loads(cli('params', '--preset', 'isoflop_cpu', '--json').stdout)
    fields = ('sparsity', 'granularity', 'budget_flops', 'flops_per_token', 'tokens', 'train_flops', 'params_total',
              'params_active', 'params_total_nonembedding', 'params_active_nonembedding')
    for r in rows:
        assert all(r[f] is not None for f in fields if not (f == 'granularity' and r['ffn'] == 'dense')), r
        assert abs(r['train_flops'] / r['budget_flops'] - 1) <= 0.02, r['variant']
    assert sorted({r['sparsity'] for r in rows}) == [0.0, 0.5, 0.875]
    budgets = sorted({r['budget_flops'] for r in rows})
    assert len(budgets) >= 4 and budgets[-1] / budgets[0] >= 8          # at least four budgets spanning 8x (#26)
    for budget in budgets:          # five distinct declared sizes per curve, and a reserve size beyond each end
        for s in (0.0, 0.5, 0.875):
            curve = [r for r in rows if r['budget_flops'] == budget and r['sparsity'] == s]
            assert len({r['d_model'] for r in curve if not r['reserve']}) == 5, (budget, s)
            widths = sorted(r['d_model'] for r in curve)
            assert [r['reserve'] for r in sorted(curve, key=lambda r: r['d_model'])] == [True] + [False] * 5 + [True], widths


def test_params_table_is_readable():
    res = cli('params', '--preset', 'tinystories')
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ['variant', 'total', 'active', 'embedding']
    assert lines[2].startswith('moe') and 'reference' in lines[2]
    assert lines[3].startswith('dense_active') and 'active-matched' in lines[3]


def test_set_model_field_changes_the_reference_and_rederives_the_baselines():
    base = {r['variant']: r for r in json.loads(cli('params', '--preset', 'cpu', '--json').stdout)}
    res = cli('params', '--preset', 'cpu', '--set', 'model.n_experts=8', '--json')
    assert res.returncode == 0, res.stderr
    rows = {r['variant']: r for r in json.loads(res.stdout)}
    assert rows['moe']['n_experts'] == 8 and rows['moe']['params_total'] > base['moe']['params_total']
    assert rows['dense_total']['params_total'] > base['dense_total']['params_total']      # matched to the new total
    assert rows['dense_active']['params_active'] == pytest.approx(base['dense_active']['params_active'], rel=0.01)


@pytest.mark.parametrize('args, message', [
    (('params', '--preset', 'gpu'), "unknown preset 'gpu'; valid presets: smoke, cpu, ablations_cpu, equal_cpu, equal_gpu, isoflop_cpu, isoflop_gpu, tinystories, stories_gpu"),
    (('params', '--variants', 'dense'), "unknown variant 'dense' in study 'cpu'; valid variants: moe, dense_active, dense_total"),
    (('params', '--set', 'model.d_modle=32'), "unknown ModelConfig field(s) ['d_modle']"),
    (('params', '--set', 'optim.lr=1'), "name a field as model.FIELD, data.FIELD or train.FIELD"),
    (('params', '--preset', '/nonexistent/study.json'), "cannot read the study declaration"),
    (('train', '--preset', 'smoke', '--variant', 'moe', '--lr', '-1', '--runs-dir', '/nonexistent/runs'),
     "lr=-1.0: a tuning run's learning rate must be a finite positive number"),
])
def test_bad_names_are_a_clear_error(args, message):
    res = cli(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and 'Traceback' not in res.stderr
    assert res.stdout == ''


def test_no_command_shows_usage():
    res = command()
    assert res.returncode == 2 and 'usage: python -m moe_study' in res.stderr
