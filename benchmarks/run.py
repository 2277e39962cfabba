"""Speed and memory harness: `python -m benchmarks.run` (or `make bench`).

Sections (each measured configuration runs in a fresh process, so peak memory is its
own; every timing is the median of repeated calls, warm-up excluded, with the process's
CPU seconds beside it; every process measures the float32 2048^3 matmul rate, the
yardstick, before and after):

- forward: inference images/s of `--model` at `--size` and `--batch` for each of
  `--output_strides`, `--forward_dtypes` and `--forward_variants` (`graph`:
  `tf.function`; `xla`: with `jit_compile=True`; `keras`: `model.predict_on_batch`, the
  default user path, its resolved `predict_jit_compile` recorded: XLA for float32 on a
  CPU), achieved GFLOP/s (2 x the M-Add count x images/s) and that as a fraction of the
  yardstick, peak memory;
- train: training-step images/s (SGD with momentum, cross-entropy) at
  `--train_output_stride` for each of `--train_variants` (`graph` and `xla`: the
  harness's own step; `keras`: `model.compile` with Keras' default `jit_compile="auto"`
  + `train_on_batch`, its resolved `jit_compile` recorded), peak memory;
- attention: one AxialAttention layer's time vs axis length, global and local span;
- postprocess: panoptic post-processing ms per image on synthetic model outputs;
- deeplab: `--deeplab_model` forward of one `--deeplab_size` image with local spans;
- deeplab_train: `--deeplab_model` training step (`PanopticDeepLabLoss` on synthetic
  street labels) on `--deeplab_train_size` crops with span `--deeplab_span`;
- profile: op-type shares of one forward and one train step of `--model`;
- zoo_export: `--zoo_model` (random weights) exported as a SavedModel through the
  preset export path, post-processing included, once with global attention and once with
  `--zoo_local_spans`, each in every `--zoo_dtypes` policy, and the float32 exports
  converted to LiteRT float32 at `--zoo_size`; export and conversion times, then in fresh
  processes the seconds per image and peak memory of each of `--zoo_signatures` and of
  the LiteRT model (at 1025x2049 about 7 minutes of a 2-core machine per attention
  variant and dtype, and 13 GiB for the LiteRT run: `--sections` leaves the section out,
  `--zoo_size` shrinks it).

The report compares with deeplab2 only through a baseline file (`--baseline`, default
`<repo>/../shared/baselines/`): the one whose CPU flags match this machine's (AVX-512F
or not), and only for figures whose process measured a yardstick within 15% of the
baseline's; otherwise it says that the machines differ and gives no ratio.

Writes `<output_dir>/<name>.json` (every number), `<name>.md` (the figures table) and
`<name>.png` (attention time vs length; images/s vs deeplab2 where compared).

Example:
    python -m benchmarks.run                                  # everything
    python -m benchmarks.run --sections=forward --forward_dtypes=float32,mixed_bfloat16
    python -m benchmarks.run --sections=zoo_export --zoo_size=129x257
    python -m benchmarks.run --quick --output_dir=/tmp/bench  # tiny models, minutes
"""

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_DIR = os.path.join(ROOT, "benchmarks", "results")
DEFAULT_BASELINE = os.path.normpath(os.path.join(ROOT, "..", "shared", "baselines"))
SECTION_NAMES = ("forward", "train", "attention", "postprocess", "deeplab", "deeplab_train",
                 "profile", "zoo_export")
# Sections measured in several configurations: their results are lists.
LISTED = ("forward", "train", "zoo_export")
_RESULT_PREFIX = "BENCHMARK_RESULT "

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The command-line flags (defined only when run as a program, or on `flag_values`)."""
    on = {"flag_values": flag_values}
    flags.DEFINE_list("sections", list(SECTION_NAMES), "Sections to run.", **on)
    flags.DEFINE_string("model", "axial_resnet_s", "Registry classifier of forward, train "
                        "and profile.", **on)
    flags.DEFINE_integer("size", 224, "Input height and width.", **on)
    flags.DEFINE_integer("batch", 8, "Batch size of forward and train.", **on)
    flags.DEFINE_list("output_strides", ["32", "16"], "Output strides of the forward runs.",
                      **on)
    flags.DEFINE_list("forward_dtypes", ["float32", "mixed_bfloat16"], "Keras dtype "
                      "policies of the forward runs (float32, mixed_bfloat16, mixed_float16); "
                      "all but float32 run at the first output stride only.", **on)
    flags.DEFINE_integer("train_output_stride", 16, "Output stride of the train step.", **on)
    flags.DEFINE_string("train_dtype", "float32", "Keras dtype policy of the train step.", **on)
    flags.DEFINE_list("forward_variants", ["graph", "xla", "keras"], "How the forward runs: "
                      "tf.function, with XLA, Keras predict_on_batch; each dtype and stride "
                      "runs once per value.", **on)
    flags.DEFINE_list("train_variants", ["graph", "xla", "keras"], "How the train step runs: "
                      "the harness's tf.function step, with XLA, Keras compile + "
                      "train_on_batch.", **on)
    flags.DEFINE_integer("repeats", 5, "Timed forward calls (median reported).", **on)
    flags.DEFINE_integer("train_repeats", 3, "Timed train steps (median reported).", **on)
    flags.DEFINE_list("attention_lengths", ["128", "256", "512", "1024", "2048"],
                      "Axis lengths of the attention section.", **on)
    flags.DEFINE_integer("attention_global_max", 1024, "Longest axis timed with global span.",
                         **on)
    flags.DEFINE_integer("attention_span", 65, "Local span of the attention section.", **on)
    flags.DEFINE_integer("attention_rows", 32, "Rows attended in parallel (input width).", **on)
    flags.DEFINE_string("post_size", "1025x2049", "HxW of the post-processing section.", **on)
    flags.DEFINE_integer("post_classes", 19, "Semantic classes (the last 8 are things).", **on)
    flags.DEFINE_integer("post_centers", 200, "Instances in the scene and centres kept.", **on)
    flags.DEFINE_string("deeplab_model", "axial_deeplab_s", "Registry Axial-DeepLab model.",
                        **on)
    flags.DEFINE_string("deeplab_size", "1025x2049", "HxW of the deeplab section.", **on)
    flags.DEFINE_integer("deeplab_span", 65, "Local span of the deeplab backbone stages.", **on)
    flags.DEFINE_integer("deeplab_repeats", 2, "Timed deeplab forwards.", **on)
    flags.DEFINE_string("deeplab_train_size", "513x513", "HxW of the deeplab_train crops.",
                        **on)
    flags.DEFINE_integer("deeplab_train_batch", 1, "Batch size of deeplab_train.", **on)
    flags.DEFINE_integer("deeplab_train_repeats", 3, "Timed deeplab_train steps.", **on)
    flags.DEFINE_string("zoo_model", "axial_swidernet_1_1_1_os16", "Registry zoo model of "
                        "zoo_export (random weights).", **on)
    flags.DEFINE_string("zoo_size", "1025x2049", "HxW of the zoo_export runs.", **on)
    flags.DEFINE_list("zoo_local_spans", ["none", "65", "65", "65", "65"], "Spans per stage "
                      "of the local zoo_export run (export.saved_model --spans); empty: "
                      "global only.", **on)
    flags.DEFINE_list("zoo_dtypes", ["float32", "mixed_bfloat16"], "Export dtype policies "
                      "of the zoo runs (export.saved_model --dtype); each attention variant "
                      "is exported in each.", **on)
    flags.DEFINE_list("zoo_signatures", ["serving_uint8", "serving_default"], "SavedModel "
                      "signatures served, each in its own process (serving_default gets the "
                      "image as a PNG file).", **on)
    flags.DEFINE_bool("zoo_litert", True, "Also convert each zoo export to LiteRT float32 "
                      "and time it.", **on)
    flags.DEFINE_integer("zoo_repeats", 3, "Timed images per served zoo model.", **on)
    flags.DEFINE_string("zoo_dir", None, "Where zoo_export writes its SavedModels and .tflite "
                        "files (default: a temporary folder, removed afterwards).", **on)
    flags.DEFINE_string("baseline", DEFAULT_BASELINE, "deeplab2 baseline JSON file, or a "
                        "folder of them (the one matching this machine's CPU flags is used).",
                        **on)
    flags.DEFINE_bool("quick", False, "Tiny models and sizes: a smoke test of every section.",
                      **on)
    flags.DEFINE_bool("in_process", False, "Run every section in this process (peak memory "
                      "then mixes sections).", **on)
    flags.DEFINE_integer("timeout", 1800, "Seconds allowed per measured configuration.", **on)
    flags.DEFINE_integer("zoo_timeout", 7200, "Seconds allowed per zoo_export process (an "
                         "export with its LiteRT conversion, or a served model).", **on)
    flags.DEFINE_string("output_dir", DEFAULT_OUTPUT_DIR, "Where the results go.", **on)
    flags.DEFINE_string("name", "performance", "File name stem of the results.", **on)
    flags.DEFINE_string("worker", None, "Internal: run one section and print its result.", **on)
    flags.DEFINE_string("worker_config", None, "Internal: JSON keyword arguments of --worker.",
                        **on)


def _size(text: str):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"Expected a size HxW such as 1025x2049, got {text!r}.") from None
    return height, width


def _choices(values: List[str], flag: str, choices) -> List[str]:
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise ValueError(f"--{flag} takes {', '.join(choices)}; got {', '.join(unknown)}.")
    return list(values)


def _variants(values: List[str], flag: str) -> List[str]:
    from benchmarks.sections import VARIANTS

    return _choices(values, flag, VARIANTS)


def plan(values, zoo_dir: str) -> List[Dict]:
    """The measured configurations: [{"section": worker, "kwargs": {...}}, ...]; a job
    whose result goes under another key of the results than its worker's name says so in
    `"key"`.

    Args:
        values: the parsed flags.
        zoo_dir: str. Where zoo_export writes its SavedModels and `.tflite` files.
    """
    quick = values.quick
    model = "axial_resnet_tiny" if quick else values.model
    size, batch = (32, 2) if quick else (values.size, values.batch)
    repeats = 2 if quick else values.repeats
    jobs = []
    sections = values.sections
    unknown = sorted(set(sections) - set(SECTION_NAMES))
    if unknown:
        raise ValueError(f"Unknown sections {unknown}; expected some of {list(SECTION_NAMES)}.")
    if "forward" in sections:
        for dtype in values.forward_dtypes:
            strides = values.output_strides if dtype == "float32" else values.output_strides[:1]
            for variant in _variants(values.forward_variants, "forward_variants"):
                for stride in strides:
                    jobs.append({"section": "forward", "kwargs": dict(
                        model=model, size=size, batch=batch, output_stride=int(stride),
                        dtype=dtype, variant=variant, repeats=repeats)})
    if "train" in sections:
        for variant in _variants(values.train_variants, "train_variants"):
            jobs.append({"section": "train", "kwargs": dict(
                model=model, size=size, batch=batch, output_stride=values.train_output_stride,
                dtype=values.train_dtype, variant=variant,
                repeats=2 if quick else values.train_repeats)})
    if "attention" in sections:
        lengths = [16, 32] if quick else [int(v) for v in values.attention_lengths]
        jobs.append({"section": "attention", "kwargs": dict(
            lengths=lengths, global_max_length=32 if quick else values.attention_global_max,
            span=5 if quick else values.attention_span, rows=2 if quick else values.attention_rows,
            repeats=2 if quick else 9)})
    if "postprocess" in sections:
        height, width = (65, 129) if quick else _size(values.post_size)
        jobs.append({"section": "postprocess", "kwargs": dict(
            height=height, width=width, num_classes=values.post_classes,
            centers=5 if quick else values.post_centers, repeats=2 if quick else 5)})
    deeplab_model = "axial_deeplab_tiny" if quick else values.deeplab_model
    span = 5 if quick else values.deeplab_span
    if "deeplab" in sections:
        height, width = (33, 65) if quick else _size(values.deeplab_size)
        jobs.append({"section": "deeplab", "kwargs": dict(
            model=deeplab_model, height=height, width=width, spans=[None, span, span, span, span],
            repeats=1 if quick else values.deeplab_repeats)})
    if "deeplab_train" in sections:
        height, width = (65, 65) if quick else _size(values.deeplab_train_size)
        jobs.append({"section": "deeplab_train", "kwargs": dict(
            model=deeplab_model, height=height, width=width,
            batch=1 if quick else values.deeplab_train_batch,
            spans=[None, span, span, span, span], instances=4 if quick else 20,
            repeats=2 if quick else values.deeplab_train_repeats)})
    if "profile" in sections:
        jobs.append({"section": "profile", "kwargs": dict(
            model=model, size=size, batch=batch, output_stride=int(values.output_strides[0]),
            train_output_stride=values.train_output_stride)})
    if "zoo_export" in sections:
        jobs += _zoo_jobs(values, zoo_dir)
    if quick:
        for job in jobs:
            if job["section"] != "profile":
                job["kwargs"]["matmul_size"] = 256
    return jobs


# Short names of the zoo variants' export dtypes.
DTYPE_SUFFIX = {"mixed_bfloat16": "bf16"}


def _zoo_jobs(values, zoo_dir: str) -> List[Dict]:
    """zoo_export's jobs: per variant an export (and LiteRT conversion), then serving the
    SavedModel and the LiteRT model, each in its own process. A quick run exports the
    tiny stand-in with local spans only."""
    from benchmarks.sections import SIGNATURES
    from export.saved_model import EXPORT_DTYPES, parse_spans

    height, width = (65, 129) if values.quick else _size(values.zoo_size)
    local = [None, 5, 5, 5, 5] if values.quick else parse_spans(values.zoo_local_spans)
    attention = [("local", list(local))] if values.quick else (
        [("global", None)] + ([("local", list(local))] if local else []))
    repeats = 2 if values.quick else values.zoo_repeats
    jobs = []
    dtypes = _choices(values.zoo_dtypes, "zoo_dtypes", EXPORT_DTYPES)
    signatures = _choices(values.zoo_signatures, "zoo_signatures", SIGNATURES)
    # A quick run exports float32 only (tests/test_export_formats.py covers bfloat16).
    for dtype in ["float32"] if values.quick else dtypes:
        for name, spans in attention:
            variant = name if dtype == "float32" else f"{name}_{DTYPE_SUFFIX.get(dtype, dtype)}"
            saved_model = os.path.join(zoo_dir, variant, "saved_model")
            # LiteRT converts the float32 exports only (`export.tflite` is float32 or int8).
            litert = (os.path.join(zoo_dir, variant, "model.tflite")
                      if values.zoo_litert and dtype == "float32" else None)
            jobs.append({"section": "zoo_export", "kwargs": dict(
                model=values.zoo_model, variant=variant, height=height, width=width,
                spans=spans, saved_model_dir=saved_model, tflite_path=litert,
                tiny=bool(values.quick), dtype=dtype)})
            for signature in signatures:
                jobs.append({"section": "zoo_serve", "key": "zoo_export", "kwargs": dict(
                    variant=variant, path=saved_model, height=height, width=width,
                    repeats=repeats, signature=signature)})
            if litert:
                jobs.append({"section": "zoo_serve", "key": "zoo_export", "kwargs": dict(
                    variant=variant, path=litert, height=height, width=width,
                    repeats=repeats)})
    return jobs


def run_job(job: Dict, in_process: bool, timeout: int) -> Dict:
    """Runs one configuration, in a fresh Python process unless `in_process`."""
    if in_process:
        from benchmarks import sections

        return sections.SECTIONS[job["section"]](**job["kwargs"])
    command = [sys.executable, "-m", "benchmarks.run", f"--worker={job['section']}",
               f"--worker_config={json.dumps(job['kwargs'])}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):])
    raise RuntimeError(f"{job['section']} worker failed (exit {done.returncode}):\n"
                       f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def machine() -> Dict:
    """This machine: CPU model, cores, platform, Python, and whether it has AVX-512F."""
    from benchmarks.measure import cpu_flags

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    features = cpu_flags()
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "avx2": "avx2" in features,
            "avx512f": "avx512f" in features}


def versions() -> Dict:
    import keras
    import numpy
    import tensorflow

    return {"tensorflow": tensorflow.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__}


def run_benchmarks(values, argv: List[str]) -> Dict:
    """Runs every planned configuration, writes JSON, Markdown and PNG; returns the results."""
    from benchmarks import report

    this_machine = machine()
    results: Dict = {
        "command": " ".join(["python -m benchmarks.run"] + list(argv[1:])),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": this_machine, "versions": versions(), "quick": bool(values.quick),
        "memory_isolated": not values.in_process,
        "baseline": report.choose_baseline(values.baseline, this_machine["avx512f"]),
    }
    zoo_dir = values.zoo_dir or tempfile.mkdtemp(prefix="bench_zoo_")
    try:
        for job in plan(values, zoo_dir):
            logging.info("Running %s %s", job["section"], job["kwargs"])
            timeout = values.zoo_timeout if job["section"].startswith("zoo") else values.timeout
            result = run_job(job, values.in_process, timeout)
            key = job.get("key", job["section"])
            if key in LISTED:
                results.setdefault(key, []).append(result)
            else:
                results[key] = result
    finally:
        if not values.zoo_dir:
            shutil.rmtree(zoo_dir, ignore_errors=True)
    results["figures"] = report.figures(results)
    os.makedirs(values.output_dir, exist_ok=True)
    stem = os.path.join(values.output_dir, values.name)
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(report.markdown(results))
    if not report.plot(results, stem + ".png"):
        logging.warning("matplotlib is not installed: no plot written.")
    return results


def main(argv: List[str]) -> None:
    if FLAGS.worker:
        from benchmarks import sections

        result = sections.SECTIONS[FLAGS.worker](**json.loads(FLAGS.worker_config))
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return
    results = run_benchmarks(FLAGS, argv)
    from benchmarks import report

    print(report.markdown(results))
    print(f"Wrote {os.path.join(FLAGS.output_dir, FLAGS.name)}.{{json,md,png}}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
