"""Runs recorded before routers and router losses were registered parts (`balancing`, `lb_coef`, `z_coef` in the
identity, the aux-loss-free bias on the MoE layer as `balance_bias`) are still recognised as finished and resume
bit for bit under today's code."""
import json, shutil
from pathlib import Path

import torch

from moe_study.checkpoint import state_digest
from moe_study.trainer import read_metrics, train

AUX_FREE = {'model.router': 'aux_free', 'model.router_losses': {'lb': 0.0, 'z': 0.001}}


def make_old(run: Path) -> None:
    "Rewrite a run directory of today's aux-free MoE in the format written before routers were parts."
    def old_model(model: dict) -> dict:
        model = {k: v for k, v in model.items() if k not in ('router', 'router_losses')}
        return {**model, 'balancing': 'aux_free', 'lb_coef': 0.01, 'z_coef': 0.001}
    config = json.loads((run / 'config.json').read_text())
    config['identity']['model'] = old_model(config['identity']['model'])
    (run / 'config.json').write_text(json.dumps(config))
    state = torch.load(run / 'checkpoint.pt', weights_only=True)
    del state['sha256']
    identity = json.loads(state['identity'])
    state['identity'] = json.dumps({**identity, 'model': old_model(identity['model'])}, sort_keys=True)
    state['model'] = {k.replace('mlp.router.bias', 'mlp.balance_bias'): v for k, v in state['model'].items()}
    assert any(k.endswith('balance_bias') for k in state['model'])
    state['sha256'] = state_digest(state)
    torch.save(state, run / 'checkpoint.pt')


def test_an_old_finished_run_is_reused_and_an_old_checkpoint_resumes_bit_for_bit(tmp_path):
    whole = train('smoke', 'moe', 0, overrides=AUX_FREE, out_dir=tmp_path / 'whole', progress=False)
    shutil.copytree(tmp_path / 'whole', tmp_path / 'old_whole')
    make_old(tmp_path / 'old_whole')
    before = (tmp_path / 'old_whole' / 'metrics.jsonl').read_text()
    assert train('smoke', 'moe', 0, overrides=AUX_FREE, out_dir=tmp_path / 'old_whole', progress=False) == whole
    assert (tmp_path / 'old_whole' / 'metrics.jsonl').read_text() == before       # recognised: nothing trained

    assert train('smoke', 'moe', 0, overrides=AUX_FREE, out_dir=tmp_path / 'half', until=13, progress=False) is None
    make_old(tmp_path / 'half')
    resumed = train('smoke', 'moe', 0, overrides=AUX_FREE, out_dir=tmp_path / 'half', progress=False)
    assert resumed['best_val_loss'] == whole['best_val_loss']
    assert read_metrics(tmp_path / 'half', timing=False) == read_metrics(tmp_path / 'whole', timing=False)
    bias = torch.load(tmp_path / 'half' / 'checkpoint.pt', weights_only=True)['model']['layers.0.mlp.router.bias']
    assert bias.abs().sum() > 0                                   # the bias came through the resume and kept moving
