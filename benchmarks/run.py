"""Speed and memory harness: `python -m benchmarks.run` (or `make bench`).

Sections (each measured configuration runs in a fresh process, so peak memory is its
own; every timing is the median of repeated calls of a `tf.function`, warm-up excluded):

- forward: inference images/s of `--model` at `--size` and `--batch` for each of
  `--output_strides` (and `--forward_dtypes`), achieved GFLOP/s (2 x the M-Add count x
  images/s) and that as a fraction of the float32 matmul rate measured in the same
  process, peak memory;
- train: training-step images/s (SGD with momentum, cross-entropy) at
  `--train_output_stride`, peak memory;
- attention: one AxialAttention layer's time vs axis length, global and local span;
- postprocess: panoptic post-processing ms per image on synthetic model outputs;
- deeplab: `--deeplab_model` forward of one `--deeplab_size` image with local spans;
- profile: op-type shares of one forward of `--model`.

Writes `<output_dir>/<name>.json` (every number), `<name>.md` (the figures table) and
`<name>.png` (attention time vs length; images/s vs the official implementation).

Example:
    python -m benchmarks.run                                  # everything, ~10 min
    python -m benchmarks.run --sections=forward --forward_dtypes=float32,mixed_bfloat16
    python -m benchmarks.run --quick --output_dir=/tmp/bench  # a tiny model, seconds
"""

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Dict, List

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_DIR = os.path.join(ROOT, "benchmarks", "results")
SECTION_NAMES = ("forward", "train", "attention", "postprocess", "deeplab", "profile")
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
    flags.DEFINE_list("forward_jit_compile", ["false", "true"], "Forward runs without and "
                      "with XLA (jit_compile); each dtype and stride runs once per value.", **on)
    flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA (measured here: "
                      "no faster than the graph, 1.2 GiB more memory).", **on)
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
    flags.DEFINE_bool("quick", False, "Tiny models and sizes (a smoke test in seconds).", **on)
    flags.DEFINE_bool("in_process", False, "Run every section in this process (peak memory "
                      "then mixes sections).", **on)
    flags.DEFINE_integer("timeout", 1800, "Seconds allowed per measured configuration.", **on)
    flags.DEFINE_string("output_dir", DEFAULT_OUTPUT_DIR, "Where the results go.", **on)
    flags.DEFINE_string("name", "performance", "File name stem of the results.", **on)
    flags.DEFINE_string("worker", None, "Internal: run one section and print its result.", **on)
    flags.DEFINE_string("worker_config", None, "Internal: JSON keyword arguments of --worker.",
                        **on)


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"Expected true or false, got {text!r}.")
    return text.lower() == "true"


def _size(text: str):
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def plan(values) -> List[Dict]:
    """The measured configurations: [{"section": name, "kwargs": {...}}, ...]."""
    quick = values.quick
    model = "axial_resnet_tiny" if quick else values.model
    size, batch = (32, 2) if quick else (values.size, values.batch)
    repeats = 2 if quick else values.repeats
    jobs = []
    sections = values.sections
    if "forward" in sections:
        jit_values = [_bool(v) for v in values.forward_jit_compile]
        for dtype in values.forward_dtypes:
            strides = values.output_strides if dtype == "float32" else values.output_strides[:1]
            for jit_compile in jit_values:
                for stride in strides:
                    jobs.append({"section": "forward", "kwargs": dict(
                        model=model, size=size, batch=batch, output_stride=int(stride),
                        dtype=dtype, jit_compile=jit_compile, repeats=repeats)})
    if "train" in sections:
        jobs.append({"section": "train", "kwargs": dict(
            model=model, size=size, batch=batch, output_stride=values.train_output_stride,
            dtype=values.train_dtype, jit_compile=values.jit_compile,
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
    if "deeplab" in sections:
        height, width = (33, 65) if quick else _size(values.deeplab_size)
        span = 5 if quick else values.deeplab_span
        jobs.append({"section": "deeplab", "kwargs": dict(
            model="axial_deeplab_tiny" if quick else values.deeplab_model, height=height,
            width=width, spans=[None, span, span, span, span],
            repeats=1 if quick else values.deeplab_repeats)})
    if "profile" in sections:
        jobs.append({"section": "profile", "kwargs": dict(
            model=model, size=size, batch=batch, output_stride=int(values.output_strides[0]))})
    if quick:
        for job in jobs:
            if job["section"] != "profile":
                job["kwargs"]["matmul_size"] = 256
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
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> Dict:
    import keras
    import numpy
    import tensorflow

    return {"tensorflow": tensorflow.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__}


def run_benchmarks(values, argv: List[str]) -> Dict:
    """Runs every planned configuration, writes JSON, Markdown and PNG; returns the results."""
    from benchmarks import report

    results: Dict = {
        "command": " ".join(["python -m benchmarks.run"] + list(argv[1:])),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "quick": bool(values.quick),
        "memory_isolated": not values.in_process, "official": report.OFFICIAL,
    }
    for job in plan(values):
        logging.info("Running %s %s", job["section"], job["kwargs"])
        result = run_job(job, values.in_process, values.timeout)
        if job["section"] in ("forward", "train"):
            results.setdefault(job["section"], []).append(result)
        else:
            results[job["section"]] = result
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
