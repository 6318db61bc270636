"""Reporting: markdown, reference CSV lookups (and their graceful absence), plots, the run summary."""
from __future__ import annotations

import pytest

from msat import reporting as rp

PNG = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_and_formatting():
    md = rp.markdown_table(["a", "b"], [[1, 0.5], [None, "x"]])
    assert md == "| a | b |\n|---|---|\n| 1 | 0.50 |\n| n/a | x |\n"
    assert rp.pct(0.98765) == "98.77" and rp.pct(None) == "n/a" and rp.fmt("") == "n/a"
    with pytest.raises(ValueError, match="2 headers"):
        rp.markdown_table(["a", "b"], [[1]])


def test_parse_note():
    assert rp.parse_note("T16=- T32=93.71 ANS=2.92") == {"T16": "-", "T32": "93.71", "ANS": "2.92"}
    assert rp.parse_note(None) == {}


def test_paper_and_authors_reference():
    row = rp.paper_row(3, "MSAT", "cifar10", "vgg16")
    assert (row["ann_acc"], row["snn_acc"], row["steps"]) == ("95.45", "95.45", "112")
    assert rp.parse_note(rp.paper_row(7, "MSAT w/ SC", "cifar100", "vgg16")["note"])["ANS"] == "2.514"
    assert rp.paper_row(3, "MSAT", "mnist", "vgg16") is None
    msat_sc = rp.authors_run_name("msat", {"use_dtt": True, "use_det": True}, {"enabled": True})
    assert msat_sc == "snn_VthHand-1.0_useDET_True_useDTT_True_useSC_True"
    assert rp.authors_run_name("if", {"k": 0.2}, {"enabled": False}) == \
        "snn_VthHand0.2_useDET_False_useDTT_False_useSC_False"
    assert rp.authors_run_name("msat", {"use_dtt": True, "use_det": False}, {}) == \
        "snn_VthHand-1.0_useDET_False_useDTT_True_useSC_False"
    curve = rp.authors_curve("cifar10", "vgg16", msat_sc)
    assert curve[256] == 95.5 and curve[1] == 10.0 and sorted(curve)[:3] == [1, 4, 8]
    sin = rp.authors_layer_stat("cifar10", "vgg16", msat_sc, "SINRate")
    assert sorted(sin) == list(range(1, 14)) and sin[11] == 0.489
    no_sc = msat_sc.replace("useSC_True", "useSC_False")
    assert rp.authors_layer_stat("cifar10", "resnet20", no_sc, "avg_error_spikenum")[19] == 1.972   # Table 7
    assert rp.authors_curve("cifar10", "resnet20", msat_sc)[32] == 94.02
    assert rp.authors_layer_stat("cifar100", "resnet20", no_sc, "avg_error_spikenum")[19] == 6.309


def test_reference_absent_gives_na(tmp_path, monkeypatch):
    monkeypatch.setenv("MSAT_SHARED_DIR", str(tmp_path))
    assert rp.shared_dir() == tmp_path
    assert rp.load_reference("paper_tables") is None
    assert rp.paper_row(3, "MSAT", "cifar10", "vgg16") is None
    assert rp.authors_curve("cifar10", "vgg16", "x") is None
    assert rp.authors_layer_stat("cifar10", "vgg16", "x", "SINRate") is None


def test_plots_are_written(tmp_path):
    metrics = {"name": "t", "acc": [0.1, 0.5, 0.9, 0.95], "ann_acc": 0.96}
    rp.plot_acc_vs_T(metrics, tmp_path / "a.png")
    rp.plot_layer_curves({"l1": [0.0, 0.1, 0.2, 0.2], "l2": [0.0, 0.0, 0.1, 0.3]}, tmp_path / "s.png", "SIN ratio")
    rp.plot_firing_rate([{"firing_rate": 0.1}, {"firing_rate": 0.05}], tmp_path / "f.png", ref=[0.12, 0.04])
    rp.plot_panels([{"series": {"x": [1, 2]}, "shade_before": 2}, {"series": {"y": [3, 4]}, "refs": {"r": {1: 2.0}}},
                    {"series": {"z": [1, 1]}}], tmp_path / "p.png")
    for name in ("a", "s", "f", "p"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG


def test_run_summary():
    m = {"name": "demo", "ann_acc": 0.9, "acc": [0.5, 0.8, 0.9, 0.9], "steps_to_lossless": 3, "lossless_tol": 0.0,
         "timing": {"images": 10}, "energy": {"ratio": 0.5, "mean_firing_rate": 0.01}}
    s = rp.run_summary(m, [1, 4])
    assert "| 1 | 50.00 | 40.00 |" in s and "| 4 | 90.00 | 0.00 |" in s
    assert "steps to lossless (tol 0.0): 3" in s and "energy ratio SNN/ANN 0.500" in s
    m["steps_to_lossless"] = None
    assert "steps to lossless (tol 0.0): never" in rp.run_summary(m, [4])


def test_bundled_reference_equals_shared_reference():
    """The package ships a copy of ../shared/reference; it must not drift from the source."""
    shared = rp.shared_dir() / "reference"
    if not shared.is_dir():
        pytest.skip(f"no shared reference folder at {shared}")
    sources = {p.name: p for p in shared.glob("*.csv")}
    sources["baselines.csv"] = rp.shared_dir() / "anchors" / "baselines.csv"      # the rivals' published numbers
    assert sorted(sources) == sorted(p.name for p in rp.BUNDLED_REFERENCE.glob("*.csv"))
    for name, src in sources.items():
        assert (rp.BUNDLED_REFERENCE / name).read_bytes() == src.read_bytes(), name
    anchors = rp.load_anchors()
    assert {a["method"] for a in anchors} == {"qcfs", "srp", "snn_calib_light", "snn_calib_advanced", "cos"}
    assert {"method", "source", "dataset", "model", "T", "snn_acc", "note"} <= set(anchors[0])
