import importlib.util
from pathlib import Path

from test_compose import compose_config

from metarun.run import run

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_table_has_one_row_per_run(tmp_path):
    for algo in ("maml", "scratch"):
        run(compose_config(f"algo={algo}"), tmp_path / algo)
    rows = load("results_table").rows(tmp_path)
    assert len(rows) == 2
    assert rows[0].startswith("| maml | tiny | fewshot_cls 5-way 1-shot | synthetic | ")
    assert rows[1].startswith("| scratch |") and "| 3 |" in rows[1]
