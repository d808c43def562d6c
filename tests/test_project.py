"""The project as a user gets it: the Makefile path, CI wiring, and notebooks <-> library sync."""
import configparser, json, os, re, shutil, subprocess
from pathlib import Path

import pytest

from conftest import BIN, ROOT, load_json_strict, section_headings


def run(cmd, cwd=ROOT, **kw):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)


def settings():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT']


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / 'README.md').read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert any(line.split('#')[0].strip() == 'make test' for b in blocks for line in b.splitlines())
    ci = (ROOT / '.ci' / 'run').read_text()
    assert re.search(r"^make test$", ci, flags=re.M), ".ci/run must call the README's test command"
    assert os.access(ROOT / '.ci' / 'run', os.X_OK)


def test_make_installs_pinned_torch_before_the_package(tmp_path):
    out = run(['make', '-n', f'VENV={tmp_path}/venv', 'install']).stdout
    torch_at = out.find('pip install -q torch==2.13.0')
    pkg_at = out.find('pip install -q -e ".[dev,hf,cluster,eval]"')     # tests, export, launchers, the harness
    assert 0 <= torch_at < pkg_at, out


def test_make_test_runs_nbdev_test_then_pytest(tmp_path):
    out = run(['make', '-n', f'VENV={tmp_path}/venv', 'test']).stdout
    assert 0 <= out.find('bin/nbdev_test') < out.find('bin/pytest -q -n auto --dist loadgroup tests'), out
    assert 'torch==2.13.0' in out                    # a fresh clone installs first


GROUPED = """
import os, pathlib, pytest
pytestmark = pytest.mark.xdist_group('one')
@pytest.mark.parametrize('i', range(6))
def test_where(i):
    (pathlib.Path(os.environ['WHERE']) / f'{i}.worker').write_text(os.environ['PYTEST_XDIST_WORKER'])
"""


def test_tests_sharing_a_trained_fixture_run_on_one_worker(tmp_path):
    "`make test`'s `--dist loadgroup` keeps an xdist_group on one worker (pytest 9.2 broke that for pytest-xdist 3.8)."
    (tmp_path / 'suite').mkdir(); (tmp_path / 'suite' / 'test_grouped.py').write_text(GROUPED)
    (tmp_path / 'where').mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith('PYTEST_')}, 'WHERE': str(tmp_path / 'where')}
    res = run([str(BIN / 'pytest'), '-q', '-n', '2', '--dist', 'loadgroup', '-p', 'no:cacheprovider', 'test_grouped.py'],
              cwd=tmp_path / 'suite', env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    found = list((tmp_path / 'where').glob('*.worker'))
    assert len(found) == 6 and len({p.read_text() for p in found}) == 1, [p.read_text() for p in found]


def test_make_lab_opens_the_notebooks(tmp_path):
    out = run(['make', '-n', f'VENV={tmp_path}/venv', 'lab']).stdout
    assert 'jupyter lab --notebook-dir nbs' in out


@pytest.mark.skipif('MAKELEVEL' not in os.environ, reason="the install stamp exists only under `make test`")
def test_second_install_is_a_no_op():
    assert run(['make', '-q', 'install']).returncode == 0


def test_requirements_hold_the_working_nbdev_pins():
    reqs = settings()['requirements'].split()
    for pin in ('nbdev==2.4.14', 'fastcore>=1.12.3,<2', 'execnb>=0.1.12,<0.2'):
        assert pin in reqs
    for pkg in ('torch>=2.4', 'papermill', 'jupyterlab', 'sentencepiece', 'datasets', 'seaborn',
                'pandas', 'tqdm', 'ipykernel'):
        assert pkg in reqs
    assert settings()['dev_requirements'].split() == ['pytest>=8,<9.2', 'pytest-xdist>=3.5', 'hypothesis']


def test_slow_and_gpu_cells_are_skipped_by_default():
    # nbdev_test splits tst_flags on whitespace; `slow|gpu` would be one flag and run slow cells in CI
    assert settings()['tst_flags'].split() == ['slow', 'gpu']
    assert settings()['recursive'] == 'False'          # nbdev_test runs the chapters, not nbs/experiments/
    slow = lambda folder: [nb.name for nb in folder.glob('*.ipynb')
                           if any(''.join(c['source']).startswith('#| slow') for c in json.loads(nb.read_text())['cells'])]
    assert slow(ROOT / 'nbs') == []
    assert slow(ROOT / 'nbs' / 'experiments') == ['corpus_measurements.ipynb']   # minutes of training


def test_experiments_export_nothing_and_chapters_are_numbered_in_order():
    for nb in (ROOT / 'nbs' / 'experiments').glob('*.ipynb'):
        cells = json.loads(nb.read_text())['cells']
        assert not any(re.search(r'^#\|\s*(default_exp|export)', ''.join(c['source']), flags=re.M) for c in cells), nb.name
    chapters = sorted(p.name for p in (ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb'))
    assert [int(c[:2]) for c in chapters] == list(range(len(chapters))), chapters


def test_installed_package_matches_settings():
    import moe_study
    assert moe_study.__version__ == settings()['version']
    assert Path(moe_study.__file__).resolve().parent == ROOT / 'moe_study'   # editable install


@pytest.fixture()
def project_copy(tmp_path):
    "The notebooks, the library and settings.ini copied to a scratch dir, so nbdev may rewrite them."
    dst = tmp_path / 'proj'
    for name in ('nbs', 'moe_study'):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    shutil.copy(ROOT / 'settings.ini', dst / 'settings.ini')
    return dst


def snapshot(folder: Path, pattern: str):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.glob(pattern))}


def test_nbdev_export_leaves_library_unchanged(project_copy):
    before = snapshot(project_copy / 'moe_study', '*.py')
    res = run([str(BIN / 'nbdev_export')], cwd=project_copy)
    assert res.returncode == 0, res.stderr
    after = snapshot(project_copy / 'moe_study', '*.py')
    changed = [f for f in after if before.get(f) != after[f]] + sorted(set(before) - set(after))
    assert not changed, f"run nbdev_export and commit moe_study/: {changed} differ from the notebooks"


def test_every_module_comes_from_a_notebook():
    exported = set()
    for nb in (ROOT / 'nbs').glob('*.ipynb'):
        for cell in json.loads(nb.read_text())['cells']:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(cell['source']), flags=re.M)
            if m: exported.add(m.group(1))
    modules = {p.stem for p in (ROOT / 'moe_study').glob('*.py')} - {'__init__', '_modidx'}
    assert modules == exported, f"modules no notebook exports (stale, delete them): {sorted(modules - exported)}"


def test_nbdev_clean_leaves_notebooks_unchanged(project_copy):
    before = snapshot(project_copy / 'nbs', '*.ipynb')
    res = run([str(BIN / 'nbdev_clean')], cwd=project_copy)
    assert res.returncode == 0, res.stderr
    after = snapshot(project_copy / 'nbs', '*.ipynb')
    assert not [f for f in after if before[f] != after[f]], "run nbdev_clean and commit nbs/"


def test_nbdev_clean_keeps_papermill_parameters_tag(project_copy):
    nb = {"cells": [{"cell_type": "code", "execution_count": 3, "id": "x",
                     "metadata": {"tags": ["parameters"], "collapsed": True},
                     "outputs": [], "source": ["variant = 'moe'"]}],
          "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = project_copy / 'nbs' / 'params_probe.ipynb'
    path.write_text(json.dumps(nb))
    res = run([str(BIN / 'nbdev_clean'), '--fname', str(path)], cwd=project_copy)
    assert res.returncode == 0, res.stderr
    cell = json.loads(path.read_text())['cells'][0]
    assert cell['metadata'] == {'tags': ['parameters']} and cell['execution_count'] is None


def test_committed_json_is_strict():
    "Every JSON file the repository ships (reports' results, tuning records, previous designs) parses strictly."
    files = [f for d in ('report', 'nbs/experiments') for f in (ROOT / d).rglob('*.json')]
    assert any(f.name == 'results.json' for f in files)
    for f in files: load_json_strict(f)


def test_make_lab_runs_as_root_and_as_a_user(tmp_path):
    out = run(['make', '-n', f'VENV={tmp_path}/venv', 'lab']).stdout
    assert '--allow-root' in out and 'id -u' in out      # jupyter refuses root without it; a user does not need it


def test_readme_front_page_is_short_cites_its_papers_and_its_links_resolve():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.split()) <= 1500, len(readme.split())
    for arxiv in ('2605.13769', '2506.12119', '2501.12370'):
        assert f'arXiv {arxiv}' in readme, arxiv
    for page in [ROOT / 'README.md', *(ROOT / 'docs').rglob('*.md')]:
        for target in re.findall(r"\]\((?!https?:|#)([^)#]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_readme_headline_is_the_committed_reports():
    "The front page's answers are the committed results.json's, to the digits it shows."
    readme = (ROOT / 'README.md').read_text()
    cpu = load_json_strict(ROOT / 'report' / 'cpu' / 'results.json')['gaps']
    for name in ('matched_active', 'matched_total'):
        c = cpu[name]['confirmation']
        shown = f"{c['mean']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]".replace('-', '−')
        assert shown in readme, shown
    eq = load_json_strict(ROOT / 'report' / 'equal_cpu' / 'results.json')['gaps']['moe_r32_vs_dense']
    shown = f"{eq['mean']:+.3f} [{eq['ci95'][0]:+.3f}, {eq['ci95'][1]:+.3f}]".replace('-', '−')
    assert shown in readme, shown


@pytest.mark.parametrize('study', ['cpu', 'ablations_cpu', 'equal_cpu', 'isoflop_cpu'])
def test_committed_report_leads_with_its_answer(study):
    "Each committed page: the findings are its first section, their figure before the recipe, nothing announced empty."
    page = (ROOT / 'report' / study / 'index.html').read_text()
    sections = section_headings(page)
    assert sections[0] == 'What we found' and sections.index('The recipe') > 0, sections
    assert 'data:image/png' in page.split('What we found', 1)[1].split('The recipe', 1)[0]
    assert 'Incomplete and failed runs' not in sections and 'nothing to show' not in page and 'declares no' not in page
    assert '<details><summary>' in page                       # the audit's table and the samples, folded
    text = re.sub(r'src="data:[^"]*"', '', page)               # the page's words, not its images' bytes
    assert 'NaN' not in text.split('>The recipe<', 1)[0]
