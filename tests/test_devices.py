"""Device choice (num_gpus decides, never what is visible), the per-GPU lock, reduced precision."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from pipeline.devices import DeviceError, GpuLock, pick_device, visible_index


def test_no_gpu_requested_is_the_cpu_even_where_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", 0) == torch.device("cpu")
    assert pick_device("auto", None) == torch.device("cuda")  # outside Ray: what is there
    with pytest.raises(DeviceError, match="cuda needs actors.num_gpus > 0"):
        pick_device("cuda", 0)


def test_a_gpu_requested_is_the_one_ray_assigned():
    # Ray sets CUDA_VISIBLE_DEVICES to the assigned ids: GPU 5 is then visible index 0 (or 1 of "3,5")
    assert pick_device("auto", 0.25, ["5"], "5", cuda_available=True) == torch.device("cuda", 0)
    assert pick_device("auto", 1, ["5"], "3,5", cuda_available=True) == torch.device("cuda", 1)
    assert pick_device("cuda", 1, [2], None, cuda_available=True) == torch.device("cuda", 2)  # nothing hidden: the id
    assert visible_index("GPU-ab12", "GPU-ff00,GPU-ab12") == 1
    with pytest.raises(DeviceError, match="assigned this actor no GPU"):
        pick_device("auto", 1, [], None, cuda_available=True)
    with pytest.raises(DeviceError, match="CUDA is not usable"):
        pick_device("auto", 1, ["0"], "0", cuda_available=False)
    assert pick_device("cpu", 1, ["0"], "0", cuda_available=True) == torch.device("cpu")


def test_the_config_refuses_cuda_without_a_gpu():
    from search.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="cuda needs num_gpus > 0"):
        parse_config({"actors": {"device": "cuda"}})
    assert parse_config({"actors": {"device": "cuda", "num_gpus": 0.25}}).actors.num_gpus == 0.25


def test_an_evaluator_without_gpus_runs_on_the_cpu_with_cuda_patched_available(monkeypatch, digits, digits_model):
    from pipeline.evaluator import Evaluator
    from pipeline.measure import MeasureConfig
    from pipeline.models import ModelConfig
    from pipeline.spec import CandidateSpec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ev = Evaluator(ModelConfig(), digits_model.state_dict(), digits, MeasureConfig(latency_repeats=2), device="auto", num_gpus=0)
    assert ev.device == torch.device("cpu") and ev.splits.val.device == "cpu"
    r = ev.evaluate(CandidateSpec(target_sparsity=0.5))
    assert r.state == "ok", r.error
    assert r.info["device_type"] == "cpu" and r.info["device_name"] and r.info["precision"] == "fp32"
    assert r.info["latency_batch"] == "1" and r.info["latency_precision"] == "fp32" and r.info["latency_threads"] == "1"
    assert float(r.info["peak_rss_mb"]) > 0


def test_bf16_autocast_scores_close_to_fp32_on_the_cpu(digits, digits_model):
    from pipeline import measure

    fp32 = measure.accuracy(digits_model, digits.val, digits.val.y)
    bf16 = measure.accuracy(digits_model, digits.val, digits.val.y, precision="bf16")
    assert fp32 > 0.9 and abs(bf16 - fp32) <= 0.02
    assert measure.latency_ms(digits_model, digits.input_shape, 4, 2, "bf16") > 0


def test_a_latency_measurement_waits_for_the_work_on_its_gpu(tmp_path):
    lock, events = GpuLock("7", str(tmp_path)), []

    def work():
        with lock.shared():
            events.append("work start")
            time.sleep(0.3)
            events.append("work end")

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.1)
    with lock.exclusive():
        events.append("timed")
    t.join()
    assert events == ["work start", "work end", "timed"]
    with lock.shared(), GpuLock("7", str(tmp_path)).shared():  # two candidates' work share the GPU
        pass
