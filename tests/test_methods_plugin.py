"""A method is one file: a new module in the namespace package ``msat_methods`` on the path is found by
``msat.methods`` (pkgutil discovery), gets its Hydra option ``method=<name>`` (generated from the registry)
and runs end to end through ``convert_eval.py``, with no other edit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import train_digits

ROOT = Path(__file__).resolve().parents[1]

METHOD_FILE = '''
"""IF with the threshold at half the scale and V(0) = theta/4: a method in one file."""
from msat.methods import Method, register_method


@register_method
class HalfIF(Method):
    name = "half_if"
    label = "IF, 0.5 theta, V(0) = theta/4"
    preset = {"neuron": {"k": 0.5, "v_init": 0.25}}
'''


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A digits_cnn checkpoint of one short epoch."""
    return train_digits(tmp_path_factory.mktemp("ckpt"))


def _convert_eval(run_dir: Path, ckpt: Path, plugins: Path, *overrides: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "convert_eval.py", "dataset=digits", "model=digits_cnn", f"ckpt={ckpt}",
                        "T=8", "logger=none", "sim.progress=false", f"hydra.run.dir={run_dir}", *overrides],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((run_dir / "metrics.json").read_text())


def test_a_new_method_file_on_the_path_runs_with_no_other_edit(tmp_path, ckpt):
    plugins = tmp_path / "plugins"
    (plugins / "msat_methods").mkdir(parents=True)
    (plugins / "msat_methods" / "half_if.py").write_text(textwrap.dedent(METHOD_FILE))
    new = _convert_eval(tmp_path / "new", ckpt, plugins, "method=half_if")
    assert new["method"]["name"] == "half_if" and new["method"]["label"] == "IF, 0.5 theta, V(0) = theta/4"
    # the same dynamics through an existing method and the command line: the same numbers
    same = _convert_eval(tmp_path / "same", ckpt, tmp_path / "none", "method=if_max", "neuron.k=0.5",
                         "neuron.v_init=0.25")
    assert new["acc"] == same["acc"] and new["counts"] == same["counts"]
    # and a method that is not there is refused in one line listing the generated options
    env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "convert_eval.py", "method=half_if", f"ckpt={ckpt}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: unknown method option")
    assert "if_max" in r.stderr and "half_if" not in r.stderr.split("valid options:")[1]
