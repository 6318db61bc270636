"""RunLogger: local JSONL/CSV always, W&B offline by default, `none` writes no W&B files,
online without credentials falls back to offline, the context manager always finishes."""
from __future__ import annotations

import csv
import json
import time

import pytest

from msat.loggers import RunLogger
from msat.utils import UserError


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))


def _log_two_epochs(lg: RunLogger) -> None:
    lg.log({"epoch": 1, "test_acc": 0.5}, step=1)
    lg.log({"epoch": 2, "test_acc": 0.75, "lr": 0.1}, step=2)
    lg.log_table("acc_vs_T", ["T", "acc"], [[1, 0.1], [2, 0.2]])
    lg.log_summary({"best_acc": 0.75})


def test_none_writes_local_files_only(tmp_path):
    with RunLogger({"backend": "none"}, tmp_path, {"seed": 0}) as lg:
        _log_two_epochs(lg)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "acc_vs_T.csv", "metrics.csv", "metrics.jsonl", "summary.json"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows == [{"step": "1", "epoch": "1", "test_acc": "0.5", "lr": ""},
                    {"step": "2", "epoch": "2", "test_acc": "0.75", "lr": "0.1"}]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[1] == {"step": 2, "epoch": 2, "test_acc": 0.75, "lr": 0.1}
    assert (tmp_path / "acc_vs_T.csv").read_text() == "T,acc\n1,0.1\n2,0.2\n"
    assert json.loads((tmp_path / "summary.json").read_text()) == {"best_acc": 0.75}


def test_wandb_offline_run_directory(tmp_path, no_wandb_credentials):
    import wandb

    with RunLogger({"backend": "wandb", "mode": "offline", "project": "msat-test"}, tmp_path,
                   {"seed": 0}) as lg:
        assert lg.wandb_mode == "offline"
        _log_two_epochs(lg)
    assert wandb.run is None                                      # finished on exit
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert (tmp_path / "metrics.csv").is_file()


def test_online_without_credentials_falls_back_to_offline(tmp_path, no_wandb_credentials):
    t0 = time.perf_counter()
    with RunLogger({"backend": "wandb", "mode": "online"}, tmp_path, {}) as lg:
        assert lg.wandb_mode == "offline"
        lg.log({"x": 1}, step=0)
    assert time.perf_counter() - t0 < 30
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_online_with_rejected_login_falls_back_to_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")            # nothing listens there
    t0 = time.perf_counter()
    with RunLogger({"backend": "wandb", "mode": "online", "init_timeout": 2}, tmp_path, {}) as lg:
        assert lg.wandb_mode == "offline"
    assert time.perf_counter() - t0 < 90
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_exit_finishes_even_when_the_job_fails(tmp_path, no_wandb_credentials):
    import wandb

    with pytest.raises(RuntimeError, match="job failed"):
        with RunLogger({"backend": "wandb", "mode": "offline"}, tmp_path, {}) as lg:
            lg.log({"x": 1}, step=0)
            raise RuntimeError("job failed")
    assert wandb.run is None and lg._finished


def test_disabled_logger_writes_nothing(tmp_path):
    with RunLogger({"backend": "wandb"}, tmp_path / "r", {}, enabled=False) as lg:
        _log_two_epochs(lg)
    assert not (tmp_path / "r").exists()


def test_bad_logger_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown logger backend 'tensorboard'; valid: wandb, none"):
        RunLogger({"backend": "tensorboard"}, tmp_path, {})
    with pytest.raises(UserError, match="unknown logger.mode 'onlin'"):
        RunLogger({"backend": "wandb", "mode": "onlin"}, tmp_path, {})
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        RunLogger({"backend": "none"}, tmp_path, {}).log_table("t", ["a", "b", "c"], [[1, 2]])
