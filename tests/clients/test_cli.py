"""The task commands of ``steward`` (built on the Python client) against a live service,
on both databases: push files of each kind, waited jobs, aliases, pull, events, config."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp
from steward_client import Client

from app.cli import main
from tests.conftest import ADMIN
from tests.online_helpers import Server


@pytest.fixture
def server(db_url, tmp_path, monkeypatch) -> Iterator[Server]:
    with Server(db_url, tmp_path / "data") as s:
        monkeypatch.setenv("STEWARD_URL", s.url)
        monkeypatch.setenv("STEWARD_KEY", ADMIN)
        monkeypatch.setenv("STEWARD_CONFIG", str(tmp_path / "none.toml"))
        yield s


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    return X, (X[:, 0] > X[:, 1]).astype(np.int64)


def test_push_every_file_kind_then_jobs_aliases_pull_and_events(server, tmp_path, capsys):
    assert (
        run(capsys, "models", "create", "m", "--task", "binary", "--input-dim", "3", "--hidden", "8", "--json")[0] == 0
    )
    X, y = data(1200)
    # CSV with a header, the label column named and not last
    with (tmp_path / "s.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "label", "b", "c"])
        for x, t in zip(X[:500], y[:500], strict=True):
            w.writerow([x[0], t, x[1], x[2]])
    code, out, err = run(
        capsys, "push", "m", str(tmp_path / "s.csv"), "--label", "label", "--chunk-size", "200", "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {"accepted": 500, "first_offset": 0, "last_offset": 499, "requests": 3}
    (tmp_path / "s.ndjson").write_text(
        "".join(json.dumps({"x": x.tolist(), "y": int(t)}) + "\n" for x, t in zip(X[500:800], y[500:800], strict=True))
    )
    np.savez(tmp_path / "s.npz", x=X[800:1000], y=y[800:1000])
    np.save(tmp_path / "s.npy", np.column_stack([X[1000:], y[1000:]]))
    for name, n in (("s.ndjson", 300), ("s.npz", 200), ("s.npy", 200)):
        code, out, err = run(capsys, "push", "m", str(tmp_path / name))
        assert code == 0 and f"accepted {n} samples" in out, (name, out, err)
    code, out, _ = run(capsys, "models", "show", "m", "--json")
    assert json.loads(out)["online"]["accepted"] == 1200
    code, out, err = run(capsys, "batch-update", "m", "--last", "1200", "--epochs", "2", "--wait", "--json")
    assert code == 0, err
    job = json.loads(out)
    assert job["status"] == "succeeded" and job["params"]["data"]["n"] == 1200
    code, out, err = run(capsys, "quantize", "m", "--from", "2", "--wait")  # with a progress bar
    assert code == 0, err
    code, out, _ = run(capsys, "jobs", "list", "--model", "m", "--json")
    assert [j["kind"] for j in json.loads(out)] == ["quantize", "batch_update"]
    code, out, _ = run(capsys, "jobs", "list")
    assert "quantize" in out and "succeeded" in out
    # aliases
    assert run(capsys, "aliases", "set", "m", "production", "2", "--reason", "first")[0] == 0
    code, _, err = run(capsys, "aliases", "set", "m", "production", "3", "--if-match", "1")
    assert code == 1 and "412" in err
    assert run(capsys, "aliases", "set", "m", "production", "3", "--if-match", "2")[0] == 0
    code, out, _ = run(capsys, "aliases", "rollback", "m", "production", "--reason", "back", "--json")
    assert json.loads(out)["version"] == 2
    code, out, _ = run(capsys, "aliases", "history", "m", "production", "--json")
    assert [e["version"] for e in json.loads(out)] == [2, 3, 2]
    # pull: safetensors, and an onnx export made on the way
    code, out, _ = run(capsys, "pull", "m", "2", "--output", str(tmp_path / "w.safetensors"), "--json")
    assert code == 0 and stnp.load_file(str(tmp_path / "w.safetensors"))["layers.0.weight"].shape == (8, 3)
    code, out, err = run(capsys, "pull", "m", "3", "--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--json")
    assert code == 0, err
    import onnx

    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    # events
    code, out, _ = run(capsys, "events", "tail", "--after", "0", "--type", "alias.*", "--no-follow", "--json")
    lines = [json.loads(x) for x in out.splitlines()]
    assert [e["data"]["version"] for e in lines] == [2, 3, 2]
    # predict, recorded
    code, out, _ = run(capsys, "predict", "m", "--inputs", "[[0.1, 0.2, 0.3]]", "--record", "--json")
    assert len(json.loads(out)["prediction_ids"]) == 1


def test_models_list_filters(server, capsys):
    with Client(server.url, ADMIN) as st:
        st.create_model("a", task="binary", input_dim=2, tags={"team": "growth"}, description="churn")
        st.create_model("b", task="binary", input_dim=2, tags={"team": "risk"})
    code, out, _ = run(capsys, "models", "list", "--tag", "team:growth", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == ["a"]
    code, out, _ = run(capsys, "models", "list", "--search", "CHURN", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == ["a"]
    code, _, err = run(capsys, "models", "list", "--tag", "nocolon")
    assert code != 0 and "KEY:VALUE" in err


def test_errors_and_configuration(server, tmp_path, capsys, monkeypatch):
    code, _, err = run(capsys, "models", "show", "nope")
    assert code == 1 and "404" in err and "nope" in err
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    run(capsys, "models", "create", "m", "--task", "binary", "--input-dim", "1")
    code, _, err = run(capsys, "push", "m", str(tmp_path / "bad.csv"))
    assert code == 1 and "bad.csv:2" in err
    code, _, err = run(capsys, "push", "m", str(tmp_path / "x.txt"))
    assert code == 1 and ".csv" in err
    # a profile file instead of the environment
    monkeypatch.delenv("STEWARD_URL")
    monkeypatch.delenv("STEWARD_KEY")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[default]\nurl = "{server.url}"\nkey = "{ADMIN}"\n[other]\nurl = "http://127.0.0.1:9"\n')
    monkeypatch.setenv("STEWARD_CONFIG", str(cfg))
    code, out, _ = run(capsys, "models", "list", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == ["m"]
    code, _, err = run(capsys, "models", "list", "--profile", "other")
    assert code == 1 and "127.0.0.1:9" in err
    code, _, err = run(capsys, "models", "list", "--profile", "missing")
    assert code == 1 and "no profile 'missing'" in err
    cfg.unlink()
    code, _, err = run(capsys, "models", "list")
    assert code == 1 and "STEWARD_URL" in err
    assert Path(str(cfg)).exists() is False
