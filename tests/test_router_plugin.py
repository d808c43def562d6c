"""A new router loss and a new router, registered from outside the package (in this file): each is one definition
plus one registry line, and a study trains, logs and reports them by name. The study's processes (papermill
kernels) see them because this module is named in $MOE_STUDY_PLUGINS."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from moe_study.config import ROUTER_LOSSES, ROUTERS
from moe_study.router import TopKRouter, route

ROOT = Path(__file__).resolve().parents[1]     # not conftest's: the study's processes import this file as a plugin


def importance_loss(*, probs: torch.Tensor, **_) -> torch.Tensor:
    "Shazeer et al. 2017's importance loss: the squared coefficient of variation of each expert's total probability."
    importance = probs.sum(0)
    return importance.var(unbiased=False) / importance.mean() ** 2


class SoftCapRouter(TopKRouter):
    "Top-k routing on soft-capped logits, cap · tanh(ℓ / cap) (Gemma 2's logit soft-capping), cap = 5."
    def forward(self, x: torch.Tensor):
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
        return route(5.0 * torch.tanh(logits / 5.0), self.top_k, None, self.renormalize)


ROUTER_LOSSES.register('importance', importance_loss, words='the importance loss')
ROUTERS.register('softcap', SoftCapRouter, words='top-k routing on soft-capped logits')

LOSSES = {'lb': 0.01, 'z': 0.001, 'importance': 0.01}
OVERRIDES = {'model.router': 'softcap', 'model.router_losses': LOSSES}


def test_a_registered_router_and_loss_train_and_are_logged_by_name(tmp_path):
    from moe_study.trainer import read_metrics, train
    summary = train('smoke', 'moe', 0, overrides=OVERRIDES, out_dir=tmp_path / 'moe', progress=False)
    plain = train('smoke', 'moe', 0, out_dir=tmp_path / 'plain', progress=False)
    assert summary['best_val_loss'] != plain['best_val_loss']          # the router and the loss changed the run
    train_recs = [r for r in read_metrics(tmp_path / 'moe') if r['split'] == 'train']
    assert all({'lb_loss', 'z_loss', 'importance_loss'} <= set(r) for r in train_recs)
    assert all(set(layer) >= {'importance', 'lb', 'z', 'load'} for r in train_recs for layer in r['routing'])
    assert train_recs[-1]['importance_loss'] < 1.0                 # a coefficient of variation, squared
    identity = json.loads((tmp_path / 'moe' / 'config.json').read_text())['identity']
    assert identity['model']['router'] == 'softcap' and identity['model']['router_losses'] == LOSSES


@pytest.mark.long
def test_a_study_reports_a_registered_router_and_loss(tmp_path):
    sets = [a for k, v in OVERRIDES.items() for a in ('--set', f"{k}={json.dumps(v)}")]
    env = {**os.environ, 'MOE_STUDY_PLUGINS': 'test_router_plugin',
           'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT / 'tests'), os.environ.get('PYTHONPATH')]))}
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'study', '--preset', 'smoke', '--seeds', '0', '--variants', 'moe', *sets,
                          '--runs-dir', str(tmp_path / 'runs'), '--report-dir', str(tmp_path / 'report')],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = next((tmp_path / 'report').iterdir())
    html = (report / 'index.html').read_text()
    assert 'top-k routing on soft-capped logits' in html and 'the importance loss (×0.01)' in html
    assert (report / 'routing_moe.png').exists()
    records = [json.loads(l) for l in next((tmp_path / 'runs').glob('*/moe/seed0/metrics.jsonl')).read_text().splitlines()]
    assert any('importance_loss' in r for r in records)


def test_without_the_plugin_the_names_are_refused_with_the_fix(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'MOE_STUDY_PLUGINS'}
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'params', '--preset', 'smoke', '--set', 'model.router=softcap'],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "router='softcap': must be one of ('topk', 'aux_free')" in res.stderr, res.stderr
    env['MOE_STUDY_PLUGINS'] = 'no_such_plugin'
    res = subprocess.run([sys.executable, '-m', 'moe_study', 'params', '--preset', 'smoke'], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert res.returncode != 0 and "MOE_STUDY_PLUGINS names the module 'no_such_plugin'" in res.stderr, res.stderr
