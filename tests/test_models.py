"""Model zoo: shapes, sizes, fx-traceability, activation injection, registry errors."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.fx
import torch.nn as nn

from msat.models import create_model, list_models
from msat.utils import UserError

# name -> (kwargs, input factory, num_classes, parameter range)
SPECS = {
    "digits_cnn": ({}, lambda: torch.randn(2, 1, 8, 8), 10, (50_000, 80_000)),
    "vgg16": ({}, lambda: torch.randn(2, 3, 32, 32), 10, (14.5e6, 15.0e6)),
    "resnet20": ({}, lambda: torch.randn(2, 3, 32, 32), 10, (0.26e6, 0.28e6)),
    "resnet34": ({}, lambda: torch.randn(1, 3, 224, 224), 1000, (21.7e6, 21.9e6)),
    "bilstm": ({"vocab_size": 20002}, lambda: torch.randint(0, 20002, (2, 24)), 2, (3.5e6, 3.8e6)),
    "m5": ({}, lambda: torch.randn(2, 1, 8000), 35, (20_000, 30_000)),
}


def test_registry_has_every_design_model():
    assert set(SPECS) <= set(list_models())
    assert list_models("resnet*") == ["resnet20", "resnet34"]


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as e:
        create_model("vgg17")
    for name in SPECS:
        assert name in str(e.value)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_shape_and_size(name):
    kw, make_x, n_cls, (lo, hi) = SPECS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=n_cls, **kw).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert lo <= n_params <= hi, n_params
    x = make_x()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (x.shape[0], n_cls)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fx_trace_matches_eager(name):
    kw, make_x, n_cls, _ = SPECS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=n_cls, **kw).eval()
    gm = torch.fx.symbolic_trace(model)
    x = make_x()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_act_injection_replaces_every_relu(name):
    kw, _, n_cls, _ = SPECS[name]
    default = create_model(name, num_classes=n_cls, **kw)
    n_relu = sum(isinstance(m, nn.ReLU) for m in default.modules())
    assert n_relu > 0
    injected = create_model(name, num_classes=n_cls, act=nn.GELU, **kw)
    assert sum(isinstance(m, nn.ReLU) for m in injected.modules()) == 0
    assert sum(isinstance(m, nn.GELU) for m in injected.modules()) == n_relu


def test_relu_call_sites():
    """The converter sees one neuron layer per ReLU call: VGG16 13, ResNet20 1 + 9 blocks x 2."""
    def relu_calls(model):
        gm = torch.fx.symbolic_trace(model)
        mods = dict(gm.named_modules())
        return sum(n.op == "call_module" and isinstance(mods[n.target], nn.ReLU) for n in gm.graph.nodes)

    assert relu_calls(create_model("vgg16")) == 13
    assert relu_calls(create_model("resnet20")) == 19
    assert relu_calls(create_model("resnet34")) == 1 + 16 * 2     # torchvision reuses one ReLU per block
    assert relu_calls(create_model("m5")) == 4


def test_vgg16_layout_and_avg_pool():
    m = create_model("vgg16", pool="avg")
    kinds = [type(l).__name__ for l in m.features]
    assert kinds.count("Conv2d") == 13 and kinds.count("AvgPool2d") == 5 and "MaxPool2d" not in kinds
    pool_after = [sum(k == "Conv2d" for k in kinds[:i]) for i, k in enumerate(kinds) if k == "AvgPool2d"]
    assert pool_after == [2, 4, 7, 10, 13]
    assert m.classifier.in_features == 512
    with pytest.raises(ValueError, match="max, avg"):
        create_model("vgg16", pool="min")


def test_resnet20_shortcuts():
    m = create_model("resnet20")
    convs1x1 = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs1x1] == [(16, 32, (2, 2)), (32, 64, (2, 2))]


def test_bilstm_summary_is_mean_over_non_pad_positions():
    torch.manual_seed(0)
    m = create_model("bilstm", num_classes=2, vocab_size=50, hidden=8, embed_dim=4).eval()
    x = torch.tensor([[5, 6, 7, 0, 0], [9, 9, 9, 9, 9]])
    with torch.no_grad():
        seq = m.lstm(m.embedding(x))[0]                                  # (2, 5, 16)
        summary = torch.stack([seq[0, :3].mean(0), seq[1].mean(0)])      # pads of row 0 excluded
        expected = m.fc2(torch.relu(m.fc1(summary)))
        torch.testing.assert_close(m(x), expected)


def test_resnet34_pretrained_offline_gives_clear_error(monkeypatch):
    import torchvision.models._api as api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match="pretrained=false"):
        create_model("resnet34", num_classes=10, pretrained=True)


def test_model_configs_build(group_cfg, tmp_path):
    """Every model option builds through the one builder; registered ones are named as in the registry."""
    from pathlib import Path

    from msat.models import build_model

    for f in sorted((Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml")):
        if f.stem == "custom":                               # needs model._target_ (test_custom_models)
            continue
        cfg = group_cfg("model", f.stem, tmp_path)
        if f.stem != "torchvision":
            assert cfg.name == f.stem and cfg.name in list_models()
        extra = {"vocab_size": 100} if cfg.name == "bilstm" else {}     # supplied by the dataset bundle
        model, spec = build_model(cfg, 7, extra)
        assert isinstance(model, nn.Module) and spec["name"] == cfg.name


# ----------------------------------------------------------------------------- bring your own model

def readme_block(tag: str) -> str:
    """The code block of the README that follows ``<!-- custom-model:<tag> -->``."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = text.split(f"<!-- custom-model:{tag} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_readme_custom_model_library_and_command_line(tmp_path):
    """The README's own-network section, as written: the library snippet and the two commands, on a model
    defined in the user's own file; then the same model from a plain torch.save(state_dict) checkpoint."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "my_net.py").write_text(readme_block("my_net.py"))
    (tmp_path / "convert.py").write_text(readme_block("convert.py"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    r = subprocess.run([sys.executable, "convert.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MSAT + SC torch.Size([64, 16])" in r.stdout
    common = [f"paths.root_dir={tmp_path}", "logger=none", "train.epochs=4"]
    for line in readme_block("commands").strip().splitlines():
        cmd = line.replace("PYTHONPATH=. ", "").split()
        args = [a for a in cmd[2:]] + [c for c in common if not (cmd[1] == "convert_eval.py" and c == "train.epochs=4")]
        r = subprocess.run([sys.executable, str(repo / cmd[1]), *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, (line, r.stderr[-3000:])
    ck = tmp_path / "checkpoints" / "digits_my_net.pt"
    assert ck.is_file()
    runs = list((tmp_path / "outputs" / "convert_eval").rglob("metrics.json"))
    m = json.loads(runs[0].read_text())
    assert m["model"] == "my_net" and m["model_spec"]["_target_"] == "my_net.Net" and m["acc"][-1] > 0.8
    # a bare state dict (torch.save(model.state_dict())) as ckpt: rebuilt from the config, same numbers
    state = torch.load(ck, weights_only=True)["model"]
    torch.save(state, tmp_path / "my_net.pt")
    r = subprocess.run([sys.executable, str(repo / "convert_eval.py"), "model=custom", "model._target_=my_net.Net",
                        "model.name=my_net", "method=msat_sc", "T=64", f"ckpt={tmp_path / 'my_net.pt'}",
                        f"paths.root_dir={tmp_path}", "logger=none", f"hydra.run.dir={tmp_path / 'plain'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["acc"] == m["acc"]


def test_torchvision_and_custom_models_build():
    from msat.models import build_model

    m, spec = build_model({"name": "tv_resnet18", "arch": "resnet18"}, 7)
    assert spec["arch"] == "resnet18" and m.fc.out_features == 7
    with pytest.raises(UserError, match="unknown torchvision classification model 'resnet19'"):
        build_model({"name": "x", "arch": "resnet19"}, 7)
    m, spec = build_model({"name": "lin", "_target_": "torch.nn.Linear", "kwargs": {"in_features": 3,
                                                                                    "out_features": 2}}, 2)
    assert isinstance(m, nn.Linear)
    with pytest.raises(UserError, match="has no argument widht; valid: in_features, out_features"):
        build_model({"name": "lin", "_target_": "torch.nn.Linear", "kwargs": {"widht": 3}}, 2)
    with pytest.raises(UserError, match="checkpoint 'relu', config 'qcfs'"):
        build_model({"name": "digits_cnn", "act": "qcfs"}, 10, ckpt={"model_spec": build_model(
            {"name": "digits_cnn"}, 10)[1]})
