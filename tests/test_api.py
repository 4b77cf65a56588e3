"""The Python API: configs, a real search's results as DataFrames, rebuild, MACs, and
pruning an in-memory module without a search."""

from __future__ import annotations

import pytest
import torch

import search as ps


def test_config_from_a_dict_a_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: nb\nbudget: {trials: 5}\n")
    assert ps.load_config(path).budget.trials == 5
    assert ps.load_config(path, budget={"trials": 2}).budget.trials == 2
    assert ps.load_config({"space": {"methods": ["random"]}}).space.methods == ["random"]
    from search.config import ConfigError

    with pytest.raises(ConfigError, match="budget.trials"):
        ps.load_config({"budget": {"trials": 0}})


def test_prune_an_in_memory_module_like_torch_pruning(digits, digits_model):
    from pipeline.measure import accuracy

    x, y = digits.calib.x, digits.calib.y
    pruned, plan = ps.prune(digits_model, method="magnitude", sparsity=0.8, calib=(x, y))
    weights = [m.weight for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    kept = sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)
    assert kept == pytest.approx(0.2, abs=2e-3) and set(plan.masks)
    assert accuracy(pruned, digits.val.x, digits.val.y) > 0.8  # recalibrated: 80 % sparse still works
    assert all(int(m.weight.count_nonzero()) == m.weight.numel() for m in digits_model.modules() if isinstance(m, torch.nn.Conv2d))

    slim, plan = ps.prune(digits_model, method="magnitude", macs_ratio=0.5, calib=x)  # channel pruning, no labels needed
    dense, _ = ps.macs(digits_model, x[:1])
    assert ps.macs(slim, x[:1])[0] / dense == pytest.approx(0.5, abs=0.05) and plan.channels
    with pytest.raises(ValueError, match="needs labels"):
        ps.prune(digits_model, method="screening", sparsity=0.5, calib=x)
    with pytest.raises(ValueError, match="'ocs' trains: pass train=.images, labels."):
        ps.prune(digits_model, method="ocs", macs_ratio=0.5, calib=(x, y), train=x)
    with pytest.raises(ValueError, match="exactly one target"):
        ps.prune(digits_model, sparsity=0.5, macs_ratio=0.5, calib=x)


@pytest.mark.slow
def test_search_results_frame_pareto_rebuild_and_macs(digits_search):
    res = digits_search
    df = res.frame
    assert list(df.trial) == [0, 1, 2] and set(df.state) == {"ok"}
    assert {"run_id", "method", "accuracy", "macs", "sparsity", "latency_ms", "feasible", "target_sparsity"} <= set(df.columns)
    assert list(df.feasible) == list(df.macs_ratio <= 0.3)  # the search's constraint
    front = res.pareto
    assert 1 <= len(front) <= 3 and set(front.run_id) <= set(df.run_id)
    assert front.macs.is_monotonic_increasing and front.accuracy.is_monotonic_increasing
    assert res.parent_run_id and (ps.results(res.experiment, tracking_uri=res.tracking_uri).parent_run_id == res.parent_run_id)

    top = res.best(top=1).iloc[0]
    assert top.run_id in set(front.run_id)
    net = res.rebuild(top.run_id)
    from pipeline.data.splits import load_data
    from pipeline.measure import accuracy

    val = load_data(res.cfg.data).val
    assert accuracy(net, val.x, val.y) == pytest.approx(top.accuracy, abs=1e-9)
    assert ps.macs(net, val.x[:1])[1] == top.macs

    from search.export.rebuild import rebuild

    again = rebuild(res.tracking_uri, top.run_id)  # the record reader's fresh measurements, as recorded
    assert again.metrics["accuracy"] == again.rebuilt_accuracy
    for name in ("accuracy", "accuracy_before_recal", "sparsity", "macs", "macs_ratio", "test_accuracy"):
        assert again.metrics[name] == pytest.approx(top[name], abs=1e-9), name


def test_feasibility_follows_the_constraints():
    from search.api import Results

    cfg = ps.load_config({"objective": {"mode": "constrained", "max_macs_ratio": 0.5}})
    r = Results("sqlite:///x.db", "x", "p", cfg)
    assert r._feasible({"state": "ok", "accuracy": 0.9, "macs_ratio": 0.4})
    assert not r._feasible({"state": "ok", "accuracy": 0.9, "macs_ratio": 0.6})
    assert not r._feasible({"state": "failed"})
