"""driving.trace: the per-step weight recorder the runners call when FOURWAYS_TRACE is set."""

from __future__ import annotations

import torch
from torch import nn

from fourways.driving import trace


def test_recorder_only_on_rank_0_and_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.delenv(trace.TRACE_ENV, raising=False)
    assert trace.recorder(0) is None
    monkeypatch.setenv(trace.TRACE_ENV, str(tmp_path / "t.pt"))
    assert trace.recorder(1) is None
    assert isinstance(trace.recorder(0), trace.WeightTrace)


def test_records_every_step_and_reads_back_as_data_only(monkeypatch, tmp_path):
    path = tmp_path / "logs" / "trace.pt"
    monkeypatch.setenv(trace.TRACE_ENV, str(path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    recorder = trace.recorder(0)
    recorder.record(0, model, optimizer)
    expected = [{k: v.clone() for k, v in model.state_dict().items()}]
    for step in (1, 2):
        model(torch.randn(5, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        recorder.record(step, model, optimizer)
        expected.append({k: v.clone() for k, v in model.state_dict().items()})
    recorder.save()
    assert not list(path.parent.glob("*.tmp"))
    loaded = trace.Trace(torch.load(path, weights_only=True))
    assert loaded.steps == [0, 1, 2]
    assert loaded.lrs == [[0.5], [0.25], [0.125]]
    for step, state in enumerate(expected):
        got = loaded.weights(step)
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], state[k]) for k in state)
    assert loaded.skipped is None


def test_a_large_model_is_not_recorded(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(trace, "MAX_PARAMETERS", 10)
    recorder = trace.WeightTrace(tmp_path / "t.pt")
    model = nn.Linear(4, 4)  # 20 values
    recorder.record(0, model, torch.optim.SGD(model.parameters(), lr=1.0))
    recorder.save()
    loaded = trace.Trace.load(tmp_path / "t.pt")
    assert loaded.steps == [] and loaded.skipped
    assert capsys.readouterr().err.count("\n") == 1  # one warning line


def test_recording_stops_at_the_memory_cap(monkeypatch, tmp_path):
    monkeypatch.setattr(trace, "MAX_RECORDED_BYTES", 200)  # 20 float32 values a record
    recorder = trace.WeightTrace(tmp_path / "t.pt")
    model = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for step in range(5):
        recorder.record(step, model, optimizer)
    assert recorder.steps == [0, 1] and "after step 1" in (recorder.skipped or "")
