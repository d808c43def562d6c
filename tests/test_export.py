"""`python -m moe_study export`: smoke-preset dense and MoE runs, exported through the command line, load and generate
in transformers in a fresh process (offline), with the package's logits and greedy continuations."""
import json, os, subprocess, sys, textwrap

import pytest
import torch

from moe_study.config import ModelConfig, config_from_dict
from moe_study.data import load_data, val_batches
from moe_study.model import Decoder
from moe_study.checkpoint import load_checkpoint
from moe_study.trainer import train
from conftest import command

OFFLINE = {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}

# run in a fresh interpreter: what a user of the exported folder runs, with nothing of moe_study imported
LOAD_AND_GENERATE = textwrap.dedent('''
    import json, sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    out, batch_file = sys.argv[1], sys.argv[2]
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    batch = torch.load(batch_file)
    with torch.no_grad(): logits = model(batch['x']).logits
    generate = pipeline('text-generation', model=out, device='cpu')
    text = generate('Once upon a time', max_new_tokens=20, do_sample=False)[0]['generated_text']
    prompt = tok('Once upon a time', return_tensors='pt')['input_ids']
    ids = model.generate(prompt, max_new_tokens=20, do_sample=False)[0].tolist()     # what the pipeline decoded
    greedy = model.generate(batch['prompt'], max_new_tokens=batch['new'], do_sample=False, eos_token_id=None)
    torch.save({'logits': logits, 'greedy': greedy, 'class': type(model).__name__, 'text': text, 'generated_ids': ids,
                'max_length': model.generation_config.max_length,
                'ids': tok('Once upon a time', add_special_tokens=False)['input_ids']}, batch_file + '.out')
''')


def cli(*args, root):
    return command(*args, root=root, env={**os.environ, **OFFLINE})


pytestmark = pytest.mark.xdist_group('export')        # one worker trains the runs the tests export


@pytest.fixture(scope='session')
def work(tmp_path_factory):
    "Smoke MoE and dense runs of 8 steps, in a project root (MOE_STUDY_ROOT) of their own."
    root = tmp_path_factory.mktemp('export')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MOE_STUDY_ROOT', str(root))
        for variant in ('moe', 'dense_active'):
            train('smoke', variant, 0, out_dir=root / variant, progress=False, overrides={'max_steps': 8})
    return root


@pytest.mark.parametrize('variant, hf_class', [('moe', 'MixtralForCausalLM'), ('dense_active', 'LlamaForCausalLM')])
def test_exported_run_loads_and_generates_in_a_fresh_process(work, variant, hf_class, monkeypatch):
    out = work / f'{variant}_hf'
    res = cli('export', str(work / variant), str(out), root=work)
    assert res.returncode == 0, res.stderr
    assert {'config.json', 'model.safetensors', 'generation_config.json', 'tokenizer.json'} <= {p.name for p in out.iterdir()}

    # the package's model and numbers, on a real validation batch
    state = load_checkpoint(work / variant / 'checkpoint.pt', torch.device('cpu'))
    ours = Decoder(config_from_dict(ModelConfig, json.loads(state['identity'])['model'])).eval()
    ours.load_state_dict(state['model'])
    monkeypatch.setenv('MOE_STUDY_ROOT', str(work))
    data = load_data('smoke')
    x, _ = next(iter(val_batches(data.tokens('val'), 64, 4)))
    prompt, new = x[:2, :16], 64 - 16                           # greedy up to the end of the context window
    with torch.no_grad(): logits = ours(x).logits
    greedy = ours.generate(prompt, new, temperature=0)

    batch_file = str(work / f'{variant}_batch.pt')
    torch.save({'x': x, 'prompt': prompt, 'new': new}, batch_file)
    res = subprocess.run([sys.executable, '-c', LOAD_AND_GENERATE, str(out), batch_file], capture_output=True, text=True,
                         env={k: v for k, v in {**os.environ, **OFFLINE}.items() if k != 'MOE_STUDY_ROOT'})
    assert res.returncode == 0, res.stderr[-3000:]
    hf = torch.load(batch_file + '.out')
    assert hf['class'] == hf_class
    torch.testing.assert_close(hf['logits'], logits, rtol=0, atol=1e-5)
    assert torch.equal(hf['greedy'], greedy)
    assert hf['ids'] == data.tokenizer.encode('Once upon a time')
    # the pipeline's text is SentencePiece's decoding of the prompt and continuation: no space lost between them
    assert len(hf['generated_ids']) > len(hf['ids']) and hf['text'] == data.tokenizer.decode(hf['generated_ids'])
    assert hf['max_length'] == 64                               # the smoke model's context: a length is set


def test_export_refuses_what_mixtral_cannot_hold_and_never_overwrites(work, monkeypatch):
    root = work
    capped = root / 'capped'
    monkeypatch.setenv('MOE_STUDY_ROOT', str(root))
    train('smoke', 'moe', 0, out_dir=capped, progress=False, overrides={'max_steps': 2, 'model.capacity_factor': 1.0})
    res = cli('export', str(capped), str(root / 'capped_hf'), root=root)
    assert res.returncode == 2 and 'capacity_factor=1.0: Mixtral is dropless' in res.stderr, res.stderr
    assert not (root / 'capped_hf').exists() and 'Traceback' not in res.stderr

    (root / 'taken').mkdir()
    (root / 'taken' / 'keep.txt').write_text('mine')
    res = cli('export', str(root / 'moe'), str(root / 'taken'), root=root)
    assert res.returncode == 2 and 'exists; export writes a new folder' in res.stderr
    assert (root / 'taken' / 'keep.txt').read_text() == 'mine'
