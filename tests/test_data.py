"""Data sources on small local data, the token cache's integrity rules, and bad input."""
import json, os
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')      # nothing here may reach the network
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np
import pytest

import moe_study.data as data_mod
from moe_study.config import DataConfig
from moe_study.data import DataError, EOS_ID, TokenCache, build_cache, is_validation, read_documents, verify_cache
from moe_study.stories import synthetic_stories

VOCAB = 400
STORIES = synthetic_stories(7, 50, 'train', 0, 300)


def load(cfg, root, **kw):
    path = build_cache(cfg, VOCAB, root, **kw)
    return TokenCache(path, json.loads((path / 'manifest.json').read_text()))


def decoded_docs(cache, split):
    tokens = cache.tokens(split)
    ends = np.flatnonzero(tokens == EOS_ID)
    starts = np.r_[0, ends[:-1] + 1]
    return [cache.tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]


# --- files -------------------------------------------------------------------------------------------

def write_sources(folder: Path):
    folder.mkdir()
    (folder / 'a.txt').write_text('\n'.join(STORIES[:100]) + '\n')                  # one document per line
    (folder / 'b.txt').write_text('\n\n'.join(s.replace('. ', '.\n', 1) for s in STORIES[100:150]))  # blank-line separated
    (folder / 'c.jsonl').write_text('\n'.join(json.dumps({'id': i, 'story': s}) for i, s in enumerate(STORIES[150:250])))
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({'story': STORIES[250:], 'n': list(range(50))}), folder / 'd.parquet')


def test_files_folder_reads_every_format_and_splits_by_hash(tmp_path):
    write_sources(tmp_path / 'src')
    cfg = DataConfig(source='files', path=str(tmp_path / 'src'), text_field='story', val_fraction=0.1)
    # text_field names the .jsonl field and .parquet column; .txt files are plain text
    docs = read_documents(cfg.path, cfg.text_field)
    assert len(docs) == 300
    assert docs[100] == STORIES[100].replace('. ', '.\n', 1)          # a multi-line document stays whole
    cache = load(cfg, tmp_path / 'cache')
    m = cache.manifest['splits']
    assert m['train']['docs'] + m['val']['docs'] == 300 and 10 <= m['val']['docs'] <= 60
    val = decoded_docs(cache, 'val')
    assert val == [d for d in docs if is_validation(d, 0.1)]           # exact round trip, hash-chosen
    assert not set(val) & set(decoded_docs(cache, 'train'))


def test_single_jsonl_file_with_default_field(tmp_path):
    f = tmp_path / 'docs.jsonl'
    f.write_text('\n'.join(json.dumps({'text': s}) for s in STORIES) + '\n\n')
    cache = load(DataConfig(source='files', path=str(f), val_fraction=0.2, train_docs=150), tmp_path / 'cache')
    assert cache.manifest['splits']['train']['docs'] == 150


# --- tinystories (local copies only) ---------------------------------------------------------------------

def test_tinystories_from_save_to_disk_copy(tmp_path):
    import datasets
    dd = datasets.DatasetDict({'train': datasets.Dataset.from_dict({'text': STORIES[:250]}),
                               'validation': datasets.Dataset.from_dict({'text': STORIES[250:]})})
    dd.save_to_disk(str(tmp_path / 'ts'))
    cache = load(DataConfig(source='tinystories', path=str(tmp_path / 'ts'), val_docs=20), tmp_path / 'cache')
    assert cache.manifest['splits']['train']['docs'] == 250
    assert decoded_docs(cache, 'val') == STORIES[250:270]


def test_tinystories_from_a_folder_of_data_files(tmp_path):
    src = tmp_path / 'TinyStories'
    src.mkdir()
    (src / 'train.jsonl').write_text('\n'.join(json.dumps({'text': s}) for s in STORIES[:280]))
    (src / 'validation.jsonl').write_text('\n'.join(json.dumps({'text': s}) for s in STORIES[280:]))
    cache = load(DataConfig(source='tinystories', path=str(src)), tmp_path / 'cache')
    assert [cache.manifest['splits'][s]['docs'] for s in ('train', 'val')] == [280, 20]
    assert decoded_docs(cache, 'train')[:3] == STORIES[:3]


# --- the cache ------------------------------------------------------------------------------------------------

SMALL = DataConfig(train_docs=300, val_docs=30, n_characters=50)


def test_cache_is_reused_and_keyed_by_what_determines_tokens(tmp_path):
    a = build_cache(SMALL, VOCAB, tmp_path)
    mtime = (a / 'train.bin').stat().st_mtime_ns
    assert build_cache(SMALL, VOCAB, tmp_path) == a and (a / 'train.bin').stat().st_mtime_ns == mtime
    assert build_cache(SMALL.__class__(**{**SMALL.to_dict(), 'eval_tokens': 1000}), VOCAB, tmp_path) == a
    assert build_cache(SMALL, VOCAB + 8, tmp_path) != a
    assert build_cache(DataConfig(train_docs=300, val_docs=30, n_characters=50, corpus_seed=1), VOCAB, tmp_path) != a


def test_failed_rebuild_keeps_the_existing_cache(tmp_path, monkeypatch):
    path = build_cache(SMALL, VOCAB, tmp_path)
    before = verify_cache(path)
    def crash(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(data_mod, '_tokenize_split', crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache(SMALL, VOCAB, tmp_path, rebuild=True)
    assert verify_cache(path) == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]      # no scratch folder left


@pytest.mark.parametrize('damage, message', [
    (lambda p: (p / 'train.bin').write_bytes((p / 'train.bin').read_bytes()[:-2]), 'has'),
    (lambda p: (p / 'tokenizer.model').write_bytes(b'x' + (p / 'tokenizer.model').read_bytes()[1:]), 'fails its SHA-256'),
    (lambda p: (p / 'val.bin').unlink(), 'is missing'),
    (lambda p: (p / 'manifest.json').write_text('{'), 'no readable manifest.json'),
])
def test_corrupted_cache_is_rejected_not_used(tmp_path, damage, message):
    path = build_cache(SMALL, VOCAB, tmp_path)
    damage(path)
    with pytest.raises(DataError, match=message) as e:
        build_cache(SMALL, VOCAB, tmp_path)
    assert '--rebuild' in str(e.value)
    assert build_cache(SMALL, VOCAB, tmp_path, rebuild=True) == path
    verify_cache(path)


# --- bad input -------------------------------------------------------------------------------------------------

def bad_input_cases(tmp: Path):
    (tmp / 'empty.txt').write_text('\n\n  \n')
    (tmp / 'nofield.jsonl').write_text(json.dumps({'body': 'hello'}) + '\n')
    (tmp / 'broken.jsonl').write_text('{"text": "ok"}\n{"text": \n')
    (tmp / 'garbage.parquet').write_bytes(b'this is not parquet at all')
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({'body': ['a', 'b']}), tmp / 'nocol.parquet')
    return [
        (DataConfig(source='files', path=str(tmp / 'nope')), "does not exist"),
        (DataConfig(source='files', path=str(tmp / 'empty.txt')), "no documents in"),
        (DataConfig(source='files', path=str(tmp / 'nofield.jsonl')), "has no field 'text' (it has ['body'])"),
        (DataConfig(source='files', path=str(tmp / 'broken.jsonl')), "broken.jsonl:2 is not valid JSON"),
        (DataConfig(source='files', path=str(tmp / 'garbage.parquet')), "cannot read"),
        (DataConfig(source='files', path=str(tmp / 'nocol.parquet')), "has no column 'text' (it has ['body'])"),
        (DataConfig(source='tinystories', path=str(tmp / 'nope')), "does not exist"),
    ]


@pytest.mark.parametrize('case', range(7))
def test_bad_input_is_a_clear_error_and_touches_no_cache(tmp_path, case):
    src = tmp_path / 'src'; src.mkdir()
    cfg, message = bad_input_cases(src)[case]
    good = build_cache(SMALL, VOCAB, tmp_path / 'cache')
    with pytest.raises(DataError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[').replace(']', r'\]')):
        build_cache(cfg, VOCAB, tmp_path / 'cache')
    assert [p.name for p in (tmp_path / 'cache').iterdir()] == [good.name]
    verify_cache(good)


def test_vocab_larger_than_the_corpus_supports(tmp_path):
    with pytest.raises(DataError, match="vocab_size=20000 is more than this corpus supports"):
        build_cache(SMALL, 20000, tmp_path)
    assert not any(tmp_path.iterdir())


def test_too_few_validation_documents_is_explained(tmp_path):
    f = tmp_path / 'few.txt'
    f.write_text('one story\nanother story\n')
    with pytest.raises(DataError, match="no document was held out for validation"):
        build_cache(DataConfig(source='files', path=str(f), val_fraction=0.01), VOCAB, tmp_path / 'cache')


# --- the command --------------------------------------------------------------------------------------------------

from conftest import command as cli          # noqa: E402


def test_data_command_builds_verifies_rejects_and_rebuilds(tmp_path):
    res = cli('data', '--preset', 'smoke', '--json', root=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    path = Path(manifest['path'])
    assert path.parent == tmp_path / 'runs' / '_cache' and manifest['vocab_size'] == 512
    assert manifest['splits']['train']['docs'] == 2000

    res = cli('data', '--preset', 'smoke', root=tmp_path)
    assert res.returncode == 0 and 'tokens' in res.stdout and 'tokenising' not in res.stderr   # verified, not rebuilt

    with open(path / 'train.bin', 'r+b') as f: f.seek(100); f.write(b'\xff\xff')
    res = cli('data', '--preset', 'smoke', root=tmp_path)
    assert res.returncode == 2 and 'train.bin fails its SHA-256 check' in res.stderr and '--rebuild' in res.stderr
    assert 'Traceback' not in res.stderr and (path / 'train.bin').exists()

    res = cli('data', '--preset', 'smoke', '--rebuild', '--json', root=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)['splits'] == manifest['splits']


def test_tinystories_without_network_or_copy_says_how_to_fix(tmp_path):
    res = cli('data', '--preset', 'tinystories', root=tmp_path)
    assert res.returncode == 2
    assert 'could not load TinyStories' in res.stderr and 'DataConfig.path' in res.stderr


# --- building in parallel ------------------------------------------------------------------------------

def test_stories_gpu_builds_its_data_on_every_core_at_small_scale(tmp_path):
    """The paper-scale preset's corpus, 250 times smaller: generated and tokenised by a pool of workers, with the
    preset's vocabulary and world; the same bytes as a build in one process."""
    sets = ['--set', 'data.train_docs=8000', '--set', 'data.val_docs=400', '--set', 'data.tokenizer_docs=8000']
    res = cli('data', '--preset', 'stories_gpu', *sets, '--json', root=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest['vocab_size'] == 4096 and manifest['data']['n_characters'] == 500
    assert manifest['splits']['train']['docs'] == 8000 and manifest['splits']['val']['docs'] == 400
    cfg = DataConfig(**manifest['data'])
    assert data_mod.build_workers(data_mod.open_corpus(cfg)) == min(os.cpu_count(), 4)     # 4 chunks of train
    serial = json.loads((build_cache(cfg, 4096, tmp_path / 'serial', workers=1) / 'manifest.json').read_text())
    assert serial['data_sha256'] == manifest['data_sha256']


def _die(job): os._exit(3)


def test_a_build_worker_that_dies_fails_the_build_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, '_encode_job', _die)            # forked workers inherit it
    cfg = DataConfig(train_docs=6000, val_docs=300, n_characters=50, tokenizer_docs=1000)
    with pytest.raises(DataError, match='worker process building the token cache died'):
        build_cache(cfg, VOCAB, tmp_path, workers=2)
    assert list(tmp_path.iterdir()) == []
