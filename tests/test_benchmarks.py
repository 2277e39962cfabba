"""The performance harness end to end on tiny models and sizes (no timing is asserted)."""

import json
import os

import numpy as np
import pytest
from absl import flags

from benchmarks import report, run

SECTIONS = ("forward", "train", "attention", "postprocess", "deeplab", "profile")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("bench"))
    values = flags.FlagValues()
    run.define_flags(values)
    argv = ["run", "--quick", "--in_process", f"--output_dir={output_dir}", "--name=quick"]
    values(argv)
    return output_dir, run.run_benchmarks(values, argv)


def test_every_section_lands_in_the_json_markdown_and_png(quick_run):
    output_dir, results = quick_run
    with open(os.path.join(output_dir, "quick.json")) as f:
        saved = json.load(f)
    assert saved["figures"] == results["figures"]
    for key in ("command", "created", "machine", "versions", "official", "figures") + SECTIONS:
        assert key in saved, key
    assert saved["quick"] and not saved["memory_isolated"]
    with open(os.path.join(output_dir, "quick.md")) as f:
        table = f.read()
    assert saved["command"] in table and "| figure | measured |" in table
    with open(os.path.join(output_dir, "quick.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_timed_runs_report_rates_memory_and_the_matmul_yardstick(quick_run):
    _, results = quick_run
    assert [(r["output_stride"], r["dtype"], r["jit_compile"]) for r in results["forward"]] == [
        (32, "float32", False), (16, "float32", False), (32, "float32", True),
        (16, "float32", True), (32, "mixed_bfloat16", False), (32, "mixed_bfloat16", True)]
    for r in results["forward"] + results["train"]:
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert len(r["seconds"]) == 2 and r["first_call_s"] > 0
        assert r["matmul_gflops"] > 0 and r["peak_rss_gib"] > 0.1
        assert r["madds_per_image"] > 0
    forward = results["forward"][0]
    assert forward["gflops"] == pytest.approx(
        2 * forward["madds_per_image"] * forward["images_per_s"] / 1e9)
    assert forward["peak_fraction"] == pytest.approx(forward["gflops"] / forward["matmul_gflops"])
    assert results["deeplab"]["spans"] == [None, 5, 5, 5, 5]
    assert [s["scene"] for s in results["postprocess"]["scenes"]] == ["street", "noise"]
    assert results["postprocess"]["scenes"][0]["instances"] == results["postprocess"]["centers"]
    curves = results["attention"]["curves"]
    assert set(curves) == {"global", "local_5"}
    assert [p["length"] for p in curves["local_5"]] == [16, 32]
    shares = [op["share"] for op in results["profile"]["ops"]]
    assert sum(shares) == pytest.approx(1.0) and all(s > 0 for s in shares)
    assert not any(":" in op["op"] for op in results["profile"]["ops"])


def test_every_issue_figure_is_reported(quick_run):
    _, results = quick_run
    names = " / ".join(row["figure"] for row in results["figures"])
    for needle in ("forward images/s, stride 32", "forward images/s, stride 16",
                   "GFLOP/s / float32 matmul peak, stride 32, XLA",
                   "train-step images/s", "train-step peak memory",
                   "forward peak memory", "post-processing", "local_5 attention time growth"):
        assert needle in names, needle
    for row in results["figures"]:
        assert isinstance(row["met"], bool) and np.isfinite(row["value"])


def test_plan_of_the_full_run_matches_the_issue_configuration():
    values = flags.FlagValues()
    run.define_flags(values)
    values(["run"])
    jobs = run.plan(values)
    forward = [j["kwargs"] for j in jobs if j["section"] == "forward"]
    assert {(f["model"], f["size"], f["batch"]) for f in forward} == {("axial_resnet_s", 224, 8)}
    assert [(f["output_stride"], f["dtype"], f["jit_compile"]) for f in forward] == [
        (32, "float32", False), (16, "float32", False), (32, "float32", True),
        (16, "float32", True), (32, "mixed_bfloat16", False), (32, "mixed_bfloat16", True)]
    train = [j["kwargs"] for j in jobs if j["section"] == "train"][0]
    assert (train["output_stride"], train["batch"], train["dtype"]) == (16, 8, "float32")
    deeplab = [j["kwargs"] for j in jobs if j["section"] == "deeplab"][0]
    assert (deeplab["model"], deeplab["height"], deeplab["width"]) == ("axial_deeplab_s", 1025, 2049)
    post = [j["kwargs"] for j in jobs if j["section"] == "postprocess"][0]
    assert (post["height"], post["width"], post["num_classes"], post["centers"]) == (1025, 2049, 19, 200)
    lengths = [j["kwargs"] for j in jobs if j["section"] == "attention"][0]["lengths"]
    assert lengths[0] == 128 and lengths[-1] == 2048


def test_log_log_slope():
    linear = [{"length": n, "ms": 3.0 * n} for n in (128, 256, 1024)]
    quadratic = [{"length": n, "ms": 0.1 * n * n} for n in (128, 256, 1024)]
    assert report.log_log_slope(linear) == pytest.approx(1.0)
    assert report.log_log_slope(quadratic) == pytest.approx(2.0)
