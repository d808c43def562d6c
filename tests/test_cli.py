"""`python -m moe_study` as a user runs it: output formats, exit codes, bad input."""
import json, subprocess, sys

import pytest

from moe_study.config import PRESETS, VARIANTS
from moe_study.params import count_params, flops_per_token, variant_config


def cli(*args):
    return subprocess.run([sys.executable, '-m', 'moe_study', *args], capture_output=True, text=True)


@pytest.mark.parametrize('preset', list(PRESETS))
def test_params_json_lists_every_variant_matched_within_half_a_percent(preset):
    res = cli('params', '--preset', preset, '--json')
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r['variant'] for r in rows] == list(VARIANTS)
    for r in rows:
        cfg = variant_config(preset, r['variant'])
        c = count_params(cfg)
        assert (r['params_total'], r['params_active'], r['params_embedding']) == (c.total, c.active, c.embedding)
        assert r['flops_per_token'] == flops_per_token(cfg)
    assert [r['matched_to'] for r in rows] == [None, 'active', 'total']
    assert all(abs(r['residual_pct']) <= 0.5 for r in rows[1:])


def test_params_table_is_readable():
    res = cli('params', '--preset', 'tinystories')
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ['variant', 'total', 'active', 'embedding']
    assert lines[2].startswith('moe') and '(reference)' in lines[2]
    assert lines[3].startswith('dense_active') and 'active (' in lines[3]


@pytest.mark.parametrize('args, names', [
    (('params', '--preset', 'gpu'), ('smoke', 'cpu', 'tinystories')),
    (('params', '--variants', 'dense'), ('moe', 'dense_active', 'dense_total')),
])
def test_unknown_names_are_a_clear_error(args, names):
    res = cli(*args)
    assert res.returncode == 2
    assert 'invalid choice' in res.stderr and all(n in res.stderr for n in names)
    assert res.stdout == ''


def test_no_command_shows_usage():
    res = cli()
    assert res.returncode == 2 and 'usage: python -m moe_study' in res.stderr
