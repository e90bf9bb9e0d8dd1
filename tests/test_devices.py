"""Devices and dtypes, all on the CPU: --device/--dtype parsing, availability per device and dtype,
bfloat16 end to end, the dtype-cost reference rows, the CUDA-event clock's logic with a fake ``torch.cuda``,
the schema columns. The tests that need a GPU are at the end and skip without one."""

from __future__ import annotations

import json
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from harness import RunSpec, read_results, run
from harness.cli import main
from harness.devices import Placement, attention_flops, parse_placement, placement_reason
from harness.errors import UserError
from harness.analysis.summary import run_summary
from harness.execution.sampling import CudaEventClock, WallClock, clock_for, time_interleaved
from harness.store import schema

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


# -- parsing ---------------------------------------------------------------------------------------------------
def test_placement_parsing_and_defaults():
    assert parse_placement() == Placement("cpu", "float32") and Placement().is_default
    assert parse_placement("CPU", "bfloat16") == Placement("cpu", "bfloat16")
    assert parse_placement("cuda", cuda_check=lambda: True, cuda_count=lambda: 2) == Placement("cuda:0", "float32")
    assert parse_placement("cuda:1", "float16", cuda_check=lambda: True, cuda_count=lambda: 2).device == "cuda:1"
    for device, message in [("gpu", "use cpu, cuda or cuda:N"), ("cuda:x", "use cpu, cuda or cuda:N"),
                            ("cpu:3", "the CPU has no index")]:
        with pytest.raises(UserError, match=message):
            parse_placement(device)
    with pytest.raises(UserError, match="use one of float32, bfloat16, float16"):
        parse_placement("cpu", "int8")
    with pytest.raises(UserError, match="has 2 CUDA device"):
        parse_placement("cuda:2", cuda_check=lambda: True, cuda_count=lambda: 2)
    with pytest.raises(UserError, match="--device cuda: .*(no CUDA support|no usable CUDA device)"):
        parse_placement("cuda", cuda_check=lambda: False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("argv", [["run", "--device", "cuda", "-b", "dense", "-b", "topk:k=16"],
                                  ["backends", "--device", "cuda"]])
def test_cuda_without_cuda_exits_2_with_one_line(argv, capsys):
    assert main(argv + (["--no-store", "--no-progress"] if argv[0] == "run" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnbench: error: --device cuda: ") and "--device cpu" in err[0]


# -- availability ------------------------------------------------------------------------------------------------
def test_availability_depends_on_device_and_dtype(registry):
    cpu_bf16, fake_cuda = Placement("cpu", "bfloat16"), Placement("cuda:0", "float32")
    fbgemm, dense, topk = (registry.resolve(s) for s in ("fbgemm-int8", "dense", "topk:k=4"))
    assert "takes float32 only, not bfloat16" in fbgemm.unavailable_reason(placement=cpu_bf16)
    assert "runs on cpu only, not cuda" in fbgemm.unavailable_reason(placement=fake_cuda)
    assert "runs on cpu only" in registry.resolve("dynamic-quant").unavailable_reason(placement=fake_cuda)
    for backend in (dense, topk):
        assert backend.unavailable_reason(placement=cpu_bf16) is None
        assert backend.unavailable_reason(placement=fake_cuda) in (None,)
    # a parameter narrows it: the FBGEMM scorer is CPU float32 only
    scorer = registry.resolve("topk:k=4,scorer=fbgemm")
    assert "cpu only" in scorer.unavailable_reason(placement=fake_cuda)
    # composition: the intersection of the parts' devices
    assert registry.resolve("dynamic-quant+topk:k=4").devices == ("cpu",)
    assert topk.devices == ("cpu", "cuda")
    # a backend that declares nothing runs on the CPU in float32 only (the conservative default)
    class Legacy:
        pass
    assert placement_reason(Legacy, Placement()) is None
    assert "cpu only" in placement_reason(Legacy, fake_cuda)
    assert "float32 only" in placement_reason(Legacy, cpu_bf16)


def test_backends_command_shows_devices_and_dtypes(capsys):
    assert main(["backends", "--json", "--dtype", "bfloat16"]) == 0
    listing = {b["name"]: b for b in json.loads(capsys.readouterr().out)["backends"]}
    assert listing["dense"]["devices"] == ["cpu", "cuda"] and "bfloat16" in listing["dense"]["dtypes"]
    assert listing["topk"]["devices"] == ["cpu", "cuda"]
    assert listing["fbgemm-int8"]["devices"] == ["cpu"] and not listing["fbgemm-int8"]["available"]
    assert "float32 only" in listing["fbgemm-int8"]["reason"] and listing["dense"]["available"]


def test_run_where_no_backend_fits_the_dtype_says_why(tmp_path, tiny_model_dir):
    spec = RunSpec(backends=["fbgemm-int8"], tasks=["sst2"], model=[str(tiny_model_dir)], dtype="bfloat16",
                   store=None, progress=False)
    with pytest.raises(UserError, match="on cpu in bfloat16: fbgemm-int8: fbgemm-int8: takes float32 only"):
        run(spec, log=lambda m: None)


# -- bfloat16 end to end on the CPU -------------------------------------------------------------------------------
def test_bfloat16_run_on_the_cpu_end_to_end(tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    logs: list[str] = []
    spec = RunSpec(backends=["dense", "topk:k=4", "fbgemm-int8"], tasks=["sst2"], model=[str(tiny_model_dir)],
                   limit=8, eval_batch_size=8, batch_size=2, seq_len=16, repeats=1, warmup=0, fidelity_examples=4,
                   dtype="bfloat16", extra_shapes=[(1, 16)], store=store, progress=False)
    result = run(spec, log=logs.append)
    assert "fbgemm-int8" in result.skipped and "bfloat16" in result.skipped["fbgemm-int8"]
    df = read_results(store)
    assert len(df) == len(result.rows) and set(df["dtype"]) == {"bfloat16"} and set(df["device"]) == {"cpu"}
    assert df["device_info"].isna().all() and df["clock"].isna().all()  # GPU facts only on CUDA; wall clock
    assert set(df["backend"]) == {"dense", "topk:k=4"}
    metrics = set(df["metric"])
    # the dense cell also says what bfloat16 alone costs, against dense float32 on the same device
    assert {"agreement_vs_fp32", "max_abs_logit_diff_vs_fp32", "attn_cosine_mean_vs_fp32"} <= metrics
    vs_fp32 = df[df["metric"].str.endswith("_vs_fp32")]
    assert set(vs_fp32["backend"]) == {"dense"}
    diff = vs_fp32.loc[vs_fp32["metric"] == "max_abs_logit_diff_vs_fp32", "value"].iloc[0]
    assert 0 < diff < 0.5  # bfloat16 rounds (a little)
    # topk is compared with dense in bfloat16 (the same dtype), not with float32
    agree = df[(df["backend"] == "topk:k=4") & (df["metric"] == "agreement")]
    assert len(agree) == 1 and 0 <= agree["value"].iloc[0] <= 1
    core = df[(df["metric"] == "latency_attention_core") & (df["batch_size"] == 2)]
    extra = json.loads(core["extra"].iloc[0])
    assert extra["attention_flops_per_call"] == attention_flops(2, 4, 16, 8) and extra["attention_tflops"] > 0
    assert "dense-equivalent" in json.loads(core.loc[core["backend"] == "topk:k=4", "extra"].iloc[0])["flops_basis"]
    assert set(df.loc[df["category"] == "speed", "metric"]) == {"latency_forward", "latency_attention_core"}
    forward = df[df["metric"] == "latency_forward"]
    assert sorted(forward["batch_size"]) == [1, 1, 2, 2]  # the main shape and the extra one, per backend
    summary = run_summary(result.rows)
    assert "what bfloat16 alone costs: dense in bfloat16 vs dense in float32" in summary
    assert "(batch 2 x seq 16, " in summary and "cpu bfloat16" in summary
    assert "(batch 1 x seq 16, " in summary  # every latency shape gets its own block


def test_speed_shapes_per_device():
    assert RunSpec(seq_len=64).speed_shapes(Placement("cuda:0")) == [(8, 64), (1, 64), (128, 64)]
    assert RunSpec(seq_len=64).speed_shapes(Placement()) == [(8, 64)]


# -- rows and schema ----------------------------------------------------------------------------------------------
def test_device_and_dtype_are_settings_of_the_pairing_key():
    assert schema.column("device").role == schema.SETTING and schema.column("dtype").role == schema.SETTING
    assert {"device", "dtype"} <= set(schema.KEY) and "device_info" not in schema.KEY
    assert schema.differing_settings({"device": "cpu"}, {"device": "cuda:NVIDIA H200"}) == {
        "device": ("cpu", "cuda:NVIDIA H200")}


def test_older_files_read_as_cpu_float32(tmp_path):
    directory = tmp_path / "store" / "machine=m" / "date=2026-01-01"
    directory.mkdir(parents=True)
    table = pa.table({"run_id": ["old"], "timestamp": pa.array([pd.Timestamp("2026-01-01", tz="UTC")]),
                      "source": ["harness"], "metric": ["latency_forward"], "value": [1.0], "category": ["speed"]})
    pq.write_table(table.replace_schema_metadata({b"attnbench.schema_version": b"3"}), directory / "part-old.parquet")
    df = read_results(tmp_path / "store")
    assert df["device"].tolist() == ["cpu"] and df["dtype"].tolist() == ["float32"]
    assert df["device_info"].isna().all()


# -- the CUDA-event clock, with a fake torch.cuda -----------------------------------------------------------------
class FakeCuda:
    """``Event`` and ``synchronize``: events read ``perf_counter`` when recorded; flushes are counted."""

    def __init__(self) -> None:
        self.synchronized = 0

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.at = None

        def record(self) -> None:
            self.at = time.perf_counter()

        def elapsed_time(self, end: "FakeCuda.Event") -> float:
            return (end.at - self.at) * 1000.0  # milliseconds, as torch.cuda.Event

    def synchronize(self, device=None) -> None:
        self.synchronized += 1


def test_cuda_event_clock_logic_with_a_fake_device():
    fake = FakeCuda()
    clock = CudaEventClock("cuda:0", cuda=fake)
    assert all(hasattr(clock, a) for a in ("name", "unit", "measure")) and clock.unit == "s"
    assert clock.name == "cuda-event"
    calls = []
    per_call = clock.measure(lambda: (calls.append(1), time.sleep(0.002)), 3)
    assert len(calls) == 3 and 0.0015 < per_call < 0.05 and fake.synchronized == 2  # before and after

    flushing = CudaEventClock("cuda:0", flush_l2=True, cuda=fake)
    flushes = []
    flushing._flush = lambda: (flushes.append(1), time.sleep(0.01))  # outside the events: not measured
    per_call = flushing.measure(lambda: time.sleep(0.001), 2)
    assert flushing.name == "cuda-event+l2flush" and len(flushes) == 2 and per_call < 0.008
    timings = time_interleaved({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1, clock=clock)
    assert timings["a"].clock == "cuda-event" and len(timings["b"].samples) == 3


def test_clock_for_picks_by_device():
    assert isinstance(clock_for("cpu"), WallClock)
    clock = clock_for("cuda:1", flush_l2=True)
    assert isinstance(clock, CudaEventClock) and clock.flush_l2 and clock.device == "cuda:1"


# -- on a GPU -------------------------------------------------------------------------------------------------------
@CUDA
def test_cuda_event_clock_agrees_with_a_plain_event_loop():
    q, k, v = (torch.randn(8, 12, 512, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
    harness = time_interleaved({"sdpa": fn}, repeats=30, warmup=5, number=20, clock=CudaEventClock("cuda")).get("sdpa")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    plain = []
    for _ in range(30):
        torch.cuda.synchronize()
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        plain.append(start.elapsed_time(end) / 1000 / 20)
    assert abs(harness.median / sorted(plain)[15] - 1) < 0.05


@CUDA
def test_bfloat16_run_on_cuda(tmp_path, tiny_model_dir):
    spec = RunSpec(backends=["dense", "topk:k=4", "fbgemm-int8"], tasks=["sst2"], model=[str(tiny_model_dir)],
                   limit=16, batch_size=2, seq_len=16, repeats=2, warmup=1, fidelity_examples=8, device="cuda",
                   dtype="bfloat16", throughput_batch=8, store=tmp_path / "store", progress=False)
    result = run(spec, log=lambda m: None)
    assert "cpu only" in result.skipped["fbgemm-int8"]
    df = read_results(tmp_path / "store")
    assert df["device"].str.startswith("cuda:").all() and set(df["dtype"]) == {"bfloat16"}
    info = json.loads(df["device_info"].iloc[0])
    assert info["name"] and info["memory_bytes"] > 0 and info["cuda"]
    assert {"attention_core_tflops", "forward_tokens_per_s"} <= set(df["metric"])
    assert sorted(set(df.loc[df["metric"] == "latency_forward", "batch_size"])) == [1, 2, 8]
    peak = df.loc[df["metric"] == "peak_memory_forward", "value"]
    assert (peak > 0).all()
