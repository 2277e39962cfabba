"""The performance harness end to end on tiny models and sizes (no timing is asserted), its
plan of the full run, and the report's deeplab2 comparison on fabricated baselines."""

import json
import os

import keras
import numpy as np
import pytest
from absl import flags

from axial_keras.models import get_model
from benchmarks import report, run, scene, sections

pytestmark = [pytest.mark.xdist_group("test_benchmarks"), pytest.mark.long]  # one worker runs the `--quick` run fixture once

SECTIONS = ("forward", "train", "attention", "postprocess", "deeplab", "deeplab_train",
            "profile", "zoo_export")
VARIANTS = ("graph", "xla", "keras")


def _values(*args):
    values = flags.FlagValues()
    run.define_flags(values)
    values(["run", *args])
    return values


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("bench"))
    argv = ["run", "--quick", "--in_process", f"--output_dir={output_dir}", "--name=quick"]
    return output_dir, run.run_benchmarks(_values(*argv[1:]), argv)


def test_every_section_lands_in_the_json_markdown_and_png(quick_run):
    output_dir, results = quick_run
    with open(os.path.join(output_dir, "quick.json")) as f:
        saved = json.load(f)
    assert saved["figures"] == results["figures"]
    for key in ("command", "created", "machine", "versions", "baseline", "figures") + SECTIONS:
        assert key in saved, key
    assert saved["quick"] and not saved["memory_isolated"]
    assert saved["machine"]["avx512f"] == ("avx512f" in open("/proc/cpuinfo").read().split())
    with open(os.path.join(output_dir, "quick.md")) as f:
        table = f.read()
    assert saved["command"] in table and "| figure | measured | target | met |" in table
    # A quick run's 256^3 yardstick is never set against a baseline's 2048^3 one.
    assert "deeplab2 is not compared: this run measured no 2048^3 matmul yardstick" in table
    assert all(row["ratio"] is None for row in saved["figures"])
    with open(os.path.join(output_dir, "quick.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_timed_runs_report_rates_memory_and_the_matmul_yardstick(quick_run):
    _, results = quick_run
    assert [(r["output_stride"], r["dtype"], r["variant"]) for r in results["forward"]] == [
        (stride, "float32", variant) for variant in VARIANTS for stride in (32, 16)] + [
        (32, "mixed_bfloat16", variant) for variant in VARIANTS]
    assert [r["variant"] for r in results["train"]] == list(VARIANTS)
    for r in results["forward"] + results["train"] + [results["deeplab_train"]]:
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert len(r["seconds"]) == len(r["cpu_seconds"]) == 2 and r["first_call_s"] > 0
        assert r["cpu_median_s"] == pytest.approx(np.median(r["cpu_seconds"]))
        assert r["matmul_gflops"] == pytest.approx(
            (r["matmul_gflops_before"] + r["matmul_gflops_after"]) / 2)
        assert r["peak_rss_gib"] > 0.1 and r["madds_per_image"] > 0
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
    train_shares = [op["share"] for op in results["profile"]["train_ops"]]
    assert sum(train_shares) == pytest.approx(1.0) and all(s > 0 for s in train_shares)
    # A training step runs gradient ops, which no forward has.
    assert any("Grad" in op["op"] or "Backprop" in op["op"]
               for op in results["profile"]["train_ops"])


def test_the_keras_user_path_records_the_jit_compile_it_resolved(quick_run):
    _, results = quick_run
    model = get_model("axial_resnet_tiny", num_classes=1000, output_stride=16)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = {r["variant"]: r for r in results["train"]}
    assert (train["keras"]["jit_compile_requested"], train["keras"]["jit_compile"]) == (
        "auto", model.jit_compile)
    assert [(train[v]["jit_compile_requested"], train[v]["jit_compile"])
            for v in ("graph", "xla")] == [(False, False), (True, True)]
    forward = {r["variant"]: r["jit_compile"] for r in results["forward"] if r["dtype"] == "float32"}
    # predict follows the model's predict_jit_compile: XLA for float32 on a CPU, unlike
    # Keras' jit_compile, which the train step above follows.
    tiny = get_model("axial_resnet_tiny", num_classes=1000)
    keras_predict = tiny.resolved_predict_jit_compile()
    assert keras_predict is True
    assert forward == {"graph": False, "xla": True, "keras": keras_predict}


def test_deeplab_train_and_the_zoo_export_run_their_quick_stand_ins(quick_run):
    _, results = quick_run
    train = results["deeplab_train"]
    assert (train["model"], train["height"], train["width"], train["batch"]) == (
        "axial_deeplab_tiny", 65, 65, 1)
    assert train["spans"] == [None, 5, 5, 5, 5] and train["loss"] == "PanopticDeepLabLoss"
    export, served, png, litert = results["zoo_export"]
    assert [r["stage"] for r in (export, served, png, litert)] == [
        "export", "serve", "serve", "litert"]
    assert {r["variant"] for r in (export, served, png, litert)} == {"local"}
    assert (export["model"], export["tiny"], export["height"], export["width"]) == (
        "axial_swidernet_1_1_1_os16", True, 65, 129)
    assert export["spans"] == [None, 5, 5, 5, 5] and export["dtype"] == "float32"
    tiny = get_model("axial_swidernet_1_1_1_os16", **{**sections.TINY_ZOO, "backbone": {
        **sections.TINY_ZOO["backbone"], "spans": (None, 5, 5, 5, 5)}})
    assert export["trainable_params"] == sum(int(np.prod(v.shape)) for v in tiny.trainable_weights)
    assert export["madds_per_image"] == tiny.madds((1, 65, 129, 3))
    assert export["saved_model_bytes"] > export["trainable_params"] * 4
    assert export["litert_bytes"] > export["trainable_params"] * 4
    assert export["export_s"] > 0 and export["litert_convert_s"] > 0
    assert [r["signature"] for r in (served, png, litert)] == [
        "serving_uint8", "serving_default", "serving_default"]
    for r in (served, png, litert):
        assert r["seconds_per_image"] == r["median_s"] and len(r["seconds"]) == 2
        assert r["peak_rss_gib"] >= r["loaded_rss_gib"] > 0.1
    names = [row["figure"] for row in results["figures"]]
    prefix = ("zoo axial_swidernet_1_1_1_os16 (tiny stand-in) 65x129, spans none,5,5,5,5, "
              "float32: ")
    for name in ("SavedModel export s", "LiteRT float32 conversion s",
                 "SavedModel serving_uint8 s/image (post-processing included)",
                 "SavedModel serving_uint8 peak memory",
                 "SavedModel serving_default (PNG) s/image (post-processing included)",
                 "SavedModel serving_default (PNG) peak memory", "LiteRT float32 s/image "
                 "(post-processing included)", "LiteRT float32 peak memory"):
        assert prefix + name in names, name


def test_every_issue_figure_is_reported(quick_run):
    _, results = quick_run
    names = " / ".join(row["figure"] for row in results["figures"])
    for needle in ("stride 32, float32, tf.function: images/s",
                   "stride 16, float32, Keras user path, jit_compile=",
                   "stride 32, float32, XLA: GFLOP/s / float32 matmul yardstick",
                   "train step axial_resnet_tiny, 32 px, batch 2, stride 16, float32, XLA: "
                   "images/s", "float32, Keras user path, jit_compile=",
                   "train step axial_deeplab_tiny, 65x65 crops, batch 1, spans none,5,5,5,5: "
                   "peak memory", "forward, spans none,5,5,5,5: peak memory",
                   "post-processing 65x129, 19 classes, 5 centres (noise scene)",
                   "local_5 attention time growth"):
        assert needle in names, needle
    for row in results["figures"]:
        assert np.isfinite(row["value"])
        if row["target"] is not None:
            assert row["met"] == {">=": row["value"] >= row["target"],
                                  "<=": row["value"] <= row["target"],
                                  "<": row["value"] < row["target"]}[row["op"]]
        else:
            assert row["met"] is None


def test_plan_of_the_full_run_matches_the_issue_configuration():
    jobs = run.plan(_values(), "/zoo")
    forward = [j["kwargs"] for j in jobs if j["section"] == "forward"]
    assert {(f["model"], f["size"], f["batch"]) for f in forward} == {("axial_resnet_s", 224, 8)}
    assert [(f["output_stride"], f["dtype"], f["variant"]) for f in forward] == [
        (stride, "float32", variant) for variant in VARIANTS for stride in (32, 16)] + [
        (32, "mixed_bfloat16", variant) for variant in VARIANTS]
    train = [j["kwargs"] for j in jobs if j["section"] == "train"]
    assert [(t["output_stride"], t["batch"], t["size"], t["dtype"], t["variant"])
            for t in train] == [(16, 8, 224, "float32", v) for v in VARIANTS]
    deeplab = [j["kwargs"] for j in jobs if j["section"] == "deeplab"][0]
    assert (deeplab["model"], deeplab["height"], deeplab["width"]) == ("axial_deeplab_s", 1025, 2049)
    crops = [j["kwargs"] for j in jobs if j["section"] == "deeplab_train"][0]
    assert (crops["model"], crops["height"], crops["width"], crops["batch"], crops["spans"]) == (
        "axial_deeplab_s", 513, 513, 1, [None, 65, 65, 65, 65])
    post = [j["kwargs"] for j in jobs if j["section"] == "postprocess"][0]
    assert (post["height"], post["width"], post["num_classes"], post["centers"]) == (1025, 2049, 19, 200)
    lengths = [j["kwargs"] for j in jobs if j["section"] == "attention"][0]["lengths"]
    assert lengths[0] == 128 and lengths[-1] == 2048
    zoo = [(j["section"], j.get("key"), j["kwargs"]) for j in jobs if j["section"].startswith("zoo")]
    exports = [kwargs for section, _, kwargs in zoo if section == "zoo_export"]
    assert [(e["variant"], e["dtype"], e["spans"]) for e in exports] == [
        ("global", "float32", None), ("local", "float32", [None, 65, 65, 65, 65]),
        ("global_bf16", "mixed_bfloat16", None),
        ("local_bf16", "mixed_bfloat16", [None, 65, 65, 65, 65])]
    assert {(e["model"], e["height"], e["width"], e["tiny"]) for e in exports} == {
        ("axial_swidernet_1_1_1_os16", 1025, 2049, False)}
    assert [(e["saved_model_dir"], e["tflite_path"]) for e in exports] == [
        ("/zoo/global/saved_model", "/zoo/global/model.tflite"),
        ("/zoo/local/saved_model", "/zoo/local/model.tflite"),
        ("/zoo/global_bf16/saved_model", None), ("/zoo/local_bf16/saved_model", None)]
    # Each export, then its served signatures and its LiteRT model, each a process.
    served = [(k["variant"], k["path"].split("/")[-1], k.get("signature"))
              for section, key, k in zoo if section == "zoo_serve" and key == "zoo_export"]
    assert served == [
        ("global", "saved_model", "serving_uint8"), ("global", "saved_model", "serving_default"),
        ("global", "model.tflite", None),
        ("local", "saved_model", "serving_uint8"), ("local", "saved_model", "serving_default"),
        ("local", "model.tflite", None),
        ("global_bf16", "saved_model", "serving_uint8"),
        ("global_bf16", "saved_model", "serving_default"),
        ("local_bf16", "saved_model", "serving_uint8"),
        ("local_bf16", "saved_model", "serving_default")]
    assert [section for section, _, _ in zoo][:4] == [
        "zoo_export", "zoo_serve", "zoo_serve", "zoo_serve"]
    assert all(not kwargs.get("matmul_size") for _, _, kwargs in zoo)


def test_plan_of_the_zoo_flags():
    jobs = run.plan(_values("--sections=zoo_export", "--zoo_size=129x257", "--zoo_local_spans=",
                            "--nozoo_litert", "--zoo_dtypes=float32",
                            "--zoo_signatures=serving_uint8"), "/zoo")
    assert [(j["section"], j["kwargs"]["variant"], j["kwargs"]["height"], j["kwargs"]["width"])
            for j in jobs] == [("zoo_export", "global", 129, 257), ("zoo_serve", "global", 129, 257)]
    assert jobs[0]["kwargs"]["tflite_path"] is None
    with pytest.raises(ValueError, match="HxW such as 1025x2049, got '129'"):
        run.plan(_values("--sections=zoo_export", "--zoo_size=129"), "/zoo")
    with pytest.raises(ValueError, match="positive ints or `none`, got 'all'"):
        run.plan(_values("--sections=zoo_export", "--zoo_local_spans=all"), "/zoo")
    with pytest.raises(ValueError, match="--zoo_dtypes takes float32, mixed_bfloat16; got "
                                         "bfloat16"):
        run.plan(_values("--sections=zoo_export", "--zoo_dtypes=bfloat16"), "/zoo")
    with pytest.raises(ValueError, match="--zoo_signatures takes serving_uint8, "
                                         "serving_default; got serving_png"):
        run.plan(_values("--sections=zoo_export", "--zoo_signatures=serving_png"), "/zoo")
    with pytest.raises(ValueError, match=r"Unknown sections \['zoo'\]"):
        run.plan(_values("--sections=zoo"), "/zoo")
    with pytest.raises(ValueError, match="--train_variants takes graph, xla, keras; got jit"):
        run.plan(_values("--sections=train", "--train_variants=graph,jit"), "/zoo")


def test_street_panoptic_labels_follow_the_street_layout():
    panoptic = scene.street_panoptic(129, 257, num_instances=12, seed=3)
    outputs = scene.street_scene(129, 257, num_instances=12, seed=3)
    classes = panoptic // 1000
    # The same layout as the model-like outputs: their strongest logit is the label class.
    assert np.mean(np.argmax(outputs["semantic_logits"][0], -1) == classes) > 0.99
    things = np.unique(panoptic[np.isin(classes, scene.CITYSCAPES_THINGS)])
    assert 1 <= len(things) <= 12 and set(things % 1000) <= set(range(1, 13))
    assert not np.any(panoptic[~np.isin(classes, scene.CITYSCAPES_THINGS)] % 1000)


def test_log_log_slope():
    linear = [{"length": n, "ms": 3.0 * n} for n in (128, 256, 1024)]
    quadratic = [{"length": n, "ms": 0.1 * n * n} for n in (128, 256, 1024)]
    assert report.log_log_slope(linear) == pytest.approx(1.0)
    assert report.log_log_slope(quadratic) == pytest.approx(2.0)


# Fabricated deeplab2 baselines: the fields the report reads, with round numbers.
def _baseline(flags_text, yardstick, scale=1.0):
    return {
        "machine": {"cpu": "Test CPU, 2 cores", "flags": flags_text},
        report.YARDSTICK_KEY: {"median": yardstick},
        "axial_resnet_s_224_batch8": {
            "forward_output_stride_32": {"images_per_s": 6.0 * scale, "peak_rss_gib": 4.0},
            "forward_output_stride_16": {"images_per_s": 5.0 * scale, "peak_rss_gib": 4.0},
            "train_step_output_stride_16_no_recompute": {"images_per_s": 1.25 * scale,
                                                         "peak_rss_gib": 12.0},
            "multiply_adds_per_image": 3.0e9},
        "cityscapes_panoptic_1025x2049_batch1": {"axial_swidernet_1_1_1_os16": {
            "seconds_per_image_median": 16.0 / scale, "peak_rss_gib": 3.5}},
    }


@pytest.fixture
def baselines(tmp_path):
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "a_avx512.json").write_text(json.dumps(_baseline("AVX AVX2 AVX512F FMA", 400.0)))
    (folder / "b_avx2.json").write_text(json.dumps(
        _baseline("AVX AVX2 FMA (no AVX-512)", 100.0, scale=0.25)))
    return folder


def _process(yardstick, **fields):
    return {"matmul_size": 2048, "matmul_gflops": yardstick, "cpu_median_s": 1.0, **fields}


def _results(baseline, gflops, train_gflops=None):
    """A run's results as the harness writes them, every process at `gflops` but the
    train step's (`train_gflops`)."""
    classifier = {"model": "axial_resnet_s", "size": 224, "batch": 8, "dtype": "float32"}
    forward = [_process(gflops, **classifier, output_stride=stride, variant=variant,
                        jit_compile=variant == "xla", images_per_s=speed,
                        gflops=2 * 3.0e9 * speed / 1e9, peak_fraction=2 * 3.0 * speed / gflops)
               for stride, variant, speed in ((32, "graph", 15.0), (16, "keras", 18.0))]
    train = [_process(train_gflops or gflops, **classifier, output_stride=16, variant="graph",
                      jit_compile=False, images_per_s=2.5, peak_rss_gib=6.0)]
    zoo = [_process(gflops, stage="export", variant="global", model="axial_swidernet_1_1_1_os16",
                    tiny=False, height=1025, width=2049, spans=None, trainable_params=137844454,
                    madds_per_image=2.0e12, export_s=300.0, saved_model_bytes=6e8),
           _process(gflops, stage="serve", variant="global", signature="serving_uint8",
                    seconds_per_image=8.0, peak_rss_gib=3.0, loaded_rss_gib=1.5)]
    return {"command": "python -m benchmarks.run", "created": "2026-12-02T00:00:00",
            "machine": {"cpu": "Test CPU", "cores": 2, "avx512f": True},
            "versions": {"tensorflow": "2.21.0"}, "baseline": baseline, "forward": forward,
            "train": train, "zoo_export": zoo}


def _rows(results):
    results["figures"] = report.figures(results)
    return {row["figure"].split(": ", 1)[1] if row["figure"].startswith("zoo") else
            row["figure"]: row for row in results["figures"]}, report.markdown(results)


def test_the_baseline_is_the_file_of_this_machines_instruction_set(baselines, tmp_path):
    avx512 = report.choose_baseline(str(baselines), avx512f=True)
    avx2 = report.choose_baseline(str(baselines), avx512f=False)
    assert (os.path.basename(avx512["path"]), avx512["reason"]) == ("a_avx512.json", None)
    assert (os.path.basename(avx2["path"]), avx2["reason"]) == ("b_avx2.json", None)
    assert avx2["data"]["machine"]["flags"] == "AVX AVX2 FMA (no AVX-512)"
    single = report.choose_baseline(str(baselines / "b_avx2.json"), avx512f=True)
    assert single["path"] is None
    assert single["reason"] == (f"no baseline in {baselines / 'b_avx2.json'} was measured on "
                                "a CPU with AVX-512F like this one")
    missing = report.choose_baseline(str(tmp_path / "nowhere"), avx512f=True)
    assert missing["reason"] == f"there is no baseline file at {tmp_path / 'nowhere'}"
    (baselines / "c_broken.json").write_text(json.dumps({"machine": {"cpu": "x"}}))
    with pytest.raises(ValueError, match="c_broken.json is not a deeplab2 baseline"):
        report.choose_baseline(str(baselines), avx512f=True)


def test_the_default_baseline_folder_is_the_shared_one_next_to_the_repository():
    assert run.DEFAULT_BASELINE == os.path.normpath(
        os.path.join(os.path.dirname(run.ROOT), "shared", "baselines"))
    assert _values().baseline == run.DEFAULT_BASELINE


def test_a_yardstick_within_15_percent_compares_with_the_baseline(baselines):
    baseline = report.choose_baseline(str(baselines), avx512f=True)
    rows, text = _rows(_results(baseline, gflops=440.0, train_gflops=300.0))
    assert ("Compared with deeplab2 as measured in a_avx512.json (Test CPU, 2 cores, AVX AVX2 "
            "AVX512F FMA; yardstick 400 GFLOP/s): this run's yardstick reads 440 GFLOP/s "
            "(median of 5 processes, +10%)") in text
    graph = rows["forward axial_resnet_s, 224 px, batch 8, stride 32, float32, tf.function: "
                 "images/s"]
    assert (graph["ratio"], graph["target"], graph["met"]) == (2.5, 18.0, False)
    assert "| 15.00 | >= 18.00 (>= 3x deeplab2) | NO | 2.50x | 440 | deeplab2: 6.00 |" in text
    keras_path = rows["forward axial_resnet_s, 224 px, batch 8, stride 16, float32, Keras user "
                      "path, jit_compile=False: images/s"]
    assert (keras_path["ratio"], keras_path["target"], keras_path["met"]) == (3.6, 15.0, True)
    fraction = rows["forward axial_resnet_s, 224 px, batch 8, stride 32, float32, tf.function: "
                    "GFLOP/s / float32 matmul yardstick"]
    # deeplab2: 2 x 3 G M-Adds x 6 images/s over its 400 GFLOP/s yardstick.
    assert fraction["value"] == pytest.approx(90 / 440)
    assert fraction["note"] == "90.0 GFLOP/s of 440; deeplab2: 9.0%"
    served = rows["SavedModel serving_uint8 s/image (post-processing included)"]
    assert (served["ratio"], served["target"], served["met"]) == (0.5, 8.0, True)
    memory = rows["SavedModel serving_uint8 peak memory"]
    assert (memory["ratio"], memory["target"], memory["met"]) == (3.0 / 3.5, 3.5, True)
    # The train step's own process read 300 GFLOP/s: -25% from the baseline's, no ratio.
    step = rows["train step axial_resnet_s, 224 px, batch 8, stride 16, float32, tf.function: "
                "images/s"]
    assert (step["ratio"], step["target"], step["met"], step["goal"]) == (
        None, None, None, ">= 2x deeplab2")
    assert step["note"] == ("CPU 1.00 s/step; not compared: this process's yardstick read 300 "
                            "GFLOP/s (-25%), the machines differ")


def test_a_yardstick_off_by_more_than_15_percent_says_the_machines_differ(baselines):
    baseline = report.choose_baseline(str(baselines), avx512f=True)
    rows, text = _rows(_results(baseline, gflops=200.0))
    assert ("deeplab2 is not compared: the machines differ. This run's float32 matmul "
            "yardstick reads 200 GFLOP/s (median of 5 processes), -50% from the 400 GFLOP/s "
            "of a_avx512.json") in text
    assert all(row["ratio"] is None and "deeplab2:" not in row["note"] for row in rows.values())
    step = rows["train step axial_resnet_s, 224 px, batch 8, stride 16, float32, tf.function: "
                "images/s"]
    assert (step["target"], step["met"], step["comparison"]) == (None, None, "not compared")
    assert "| 2.50 | >= 2x deeplab2 |  | not compared | 200 | CPU 1.00 s/step |" in text
    fraction = rows["forward axial_resnet_s, 224 px, batch 8, stride 32, float32, tf.function: "
                    "GFLOP/s / float32 matmul yardstick"]
    assert (fraction["value"], fraction["note"]) == (pytest.approx(0.45), "90.0 GFLOP/s of 200")
    assert "| 45.0% | >= 35.0% | yes |" in text


def test_no_baseline_of_this_instruction_set_says_the_machines_differ(baselines):
    (baselines / "a_avx512.json").unlink()
    baseline = report.choose_baseline(str(baselines), avx512f=True)
    rows, text = _rows(_results(baseline, gflops=100.0))
    assert (f"deeplab2 is not compared: the machines differ (no baseline in {baselines} was "
            "measured on a CPU with AVX-512F like this one)") in text
    assert all(row["ratio"] is None for row in rows.values())
    assert rows["SavedModel serving_uint8 s/image (post-processing included)"]["goal"] == (
        "<= 0.5x deeplab2")
