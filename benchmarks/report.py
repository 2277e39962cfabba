"""Figures of a harness run checked against the targets, as a Markdown table and a plot.

The official implementation's figures (deeplab2, TF 2.21, measured on this kind of
2-core machine; see the performance issue) are constants here: deeplab2 cannot run in
this environment, so every comparison with it is against those numbers, and the
machine-independent yardstick is the float32 matmul rate measured in the same run.
"""

import math
from typing import Dict, List, Optional

# deeplab2's Axial-ResNet-S on this kind of machine, TF 2.21, batch 8, 224 x 224, float32.
OFFICIAL = {
    "forward_images_per_s": {"32": 0.94, "16": 0.95},
    "train_images_per_s": 0.185,           # SGD, cross-entropy, output stride 16
    "train_peak_gib": 9.6,
    "train_recompute_images_per_s": 0.126,  # with its gradient recomputation on
    "train_recompute_peak_gib": 8.6,
    "madds_per_image": 2.8e9,
    "peak_fraction": 0.055,                # 0.94 images/s x 2 x 2.8 G / 96 GFLOP/s
    "largest_input": 257,                  # 'Local axial attention has not been implemented'
}
SPEEDUP_TARGET = 1.5
PEAK_FRACTION_TARGET = 0.35
DEEPLAB_MEMORY_TARGET_GIB = 16.0
POSTPROCESS_TARGET_MS = 200.0


def log_log_slope(points: List[Dict]) -> Optional[float]:
    """Least-squares slope of log(ms) against log(length): 1 linear, 2 quadratic."""
    if len(points) < 2:
        return None
    xs = [math.log(p["length"]) for p in points]
    ys = [math.log(p["ms"]) for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def figures(results: Dict) -> List[Dict]:
    """The issue's figures: measured value, target, whether it is met, matmul GFLOP/s."""
    rows = []

    def add(name, value, target, met, unit, matmul=None, note=""):
        rows.append({"figure": name, "value": value, "target": target, "met": bool(met),
                     "unit": unit, "matmul_gflops": matmul, "note": note})

    graph32 = {r["output_stride"]: r for r in results.get("forward", [])
               if r["dtype"] == "float32" and not r.get("jit_compile")}
    for run in results.get("forward", []):
        mode = ", XLA" if run.get("jit_compile") else ""
        official = OFFICIAL["forward_images_per_s"].get(str(run["output_stride"]), 0.0)
        notes = [f"{run['images_per_s'] / official:.2f}x deeplab2"] if official else []
        base = graph32.get(run["output_stride"])
        if base is not None and base is not run:
            notes.append(f"{run['images_per_s'] / base['images_per_s']:.2f}x float32 graph")
        add(f"forward images/s, stride {run['output_stride']}, batch {run['batch']}, "
            f"{run['dtype']}{mode}", run["images_per_s"], SPEEDUP_TARGET * official,
            run["images_per_s"] >= SPEEDUP_TARGET * official, "images/s",
            run["matmul_gflops"], "; ".join(notes))
        if run["dtype"] != "float32":
            continue  # the yardstick is the float32 matmul: only float32 runs compare
        add(f"forward GFLOP/s / float32 matmul peak, stride {run['output_stride']}{mode}",
            run["peak_fraction"], PEAK_FRACTION_TARGET,
            run["peak_fraction"] >= PEAK_FRACTION_TARGET, "fraction", run["matmul_gflops"],
            f"{run['gflops']:.1f} GFLOP/s of {run['matmul_gflops']:.0f}")
    for run in results.get("train", []):
        if run["dtype"] != "float32":
            continue
        official = OFFICIAL["train_images_per_s"]
        add(f"train-step images/s, stride {run['output_stride']}, batch {run['batch']}"
            f"{', XLA' if run.get('jit_compile') else ''}",
            run["images_per_s"], SPEEDUP_TARGET * official,
            run["images_per_s"] >= SPEEDUP_TARGET * official, "images/s", run["matmul_gflops"],
            f"{run['images_per_s'] / official:.2f}x deeplab2")
        add("train-step peak memory", run["peak_rss_gib"], OFFICIAL["train_peak_gib"],
            run["peak_rss_gib"] <= OFFICIAL["train_peak_gib"], "GiB", None,
            f"deeplab2: {OFFICIAL['train_peak_gib']} GiB")
    if "deeplab" in results:
        run = results["deeplab"]
        add(f"{run['model']} {run['height']}x{run['width']} forward peak memory",
            run["peak_rss_gib"], DEEPLAB_MEMORY_TARGET_GIB,
            run["peak_rss_gib"] <= DEEPLAB_MEMORY_TARGET_GIB, "GiB", run["matmul_gflops"],
            f"{run['seconds_per_image']:.1f} s/image; deeplab2 fails above "
            f"{OFFICIAL['largest_input']} px")
    if "postprocess" in results:
        run = results["postprocess"]
        for scene in run["scenes"]:
            add(f"post-processing {run['height']}x{run['width']}, {run['num_classes']} "
                f"classes, {run['centers']} centres ({scene['scene']} scene)", scene["ms"],
                POSTPROCESS_TARGET_MS, scene["ms"] < POSTPROCESS_TARGET_MS, "ms",
                run["matmul_gflops"], f"{scene['instances']} instances")
    if "attention" in results:
        run = results["attention"]
        for name, points in run["curves"].items():
            slope = log_log_slope(points)
            if slope is None:
                continue
            lengths = f"L = {points[0]['length']}..{points[-1]['length']}"
            if name.startswith("local"):
                add(f"{name} attention time growth exponent ({lengths})", slope, 1.0,
                    slope <= 1.2, "log-log slope", run["matmul_gflops"], "1 = linear")
            else:
                add(f"global attention time growth exponent ({lengths})", slope, 2.0, True,
                    "log-log slope", run["matmul_gflops"], "reference: 2 = quadratic")
    return rows


def _format(value, unit):
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit in ("ms", "GiB"):
        return f"{value:.1f} {unit}"
    if unit == "images/s":
        return f"{value:.2f}"
    return f"{value:.2f}"


def markdown(results: Dict) -> str:
    """The figures table, the attention curve and the profile as Markdown."""
    lines = [f"`{results['command']}` ({results['created']}, {results['machine']['cpu']}, "
             f"{results['machine']['cores']} cores, TF {results['versions']['tensorflow']})",
             "", "| figure | measured | target | met | matmul GFLOP/s | note |",
             "|---|---|---|---|---|---|"]
    for row in results["figures"]:
        target = ("< " if row["unit"] == "ms" else "<= " if row["unit"] == "GiB" else ">= ")
        if row["unit"] == "log-log slope":
            target = "~ "
        matmul = f"{row['matmul_gflops']:.0f}" if row["matmul_gflops"] else ""
        lines.append(f"| {row['figure']} | {_format(row['value'], row['unit'])} | "
                     f"{target}{_format(row['target'], row['unit'])} | "
                     f"{'yes' if row['met'] else 'NO'} | {matmul} | {row['note']} |")
    if "attention" in results:
        run = results["attention"]
        lengths = sorted({p["length"] for points in run["curves"].values() for p in points})
        lines += ["", f"AxialAttention (8 heads, key {run['key_dim']}, value "
                  f"{run['value_dim']}) on [1, L, {run['rows']}, {run['channels']}], ms per call:",
                  "", "| L | " + " | ".join(run["curves"]) + " |",
                  "|---" * (len(run["curves"]) + 1) + "|"]
        for length in lengths:
            cells = []
            for points in run["curves"].values():
                ms = [p["ms"] for p in points if p["length"] == length]
                cells.append(f"{ms[0]:.1f}" if ms else "")
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
    if "profile" in results:
        run = results["profile"]
        lines += ["", f"Op-type shares of one {run['model']} forward (batch {run['batch']}, "
                  f"{run['size']} px), summed over compute threads:", "",
                  "| op | share | s |", "|---|---|---|"]
        for op in run["ops"]:
            lines.append(f"| {op['op']} | {100 * op['share']:.1f}% | {op['seconds']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> bool:
    """Writes the PNG (attention time vs length; images/s vs deeplab2). False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4))
    if "attention" in results:
        run = results["attention"]
        for name, points in run["curves"].items():
            if points:
                left.loglog([p["length"] for p in points], [p["ms"] for p in points], "o-",
                            label=f"{name} (slope {log_log_slope(points) or 0:.2f})")
        left.set_xlabel("axis length L")
        left.set_ylabel("ms per AxialAttention call")
        left.set_title(f"[1, L, {run['rows']}, {run['channels']}] input, inference")
        left.grid(True, which="both", alpha=0.3)
        left.legend()
    labels, ours, theirs = [], [], []
    for run in results.get("forward", []):
        official = OFFICIAL["forward_images_per_s"].get(str(run["output_stride"]))
        if official and run["dtype"] == "float32":
            labels.append(f"forward{' XLA' if run.get('jit_compile') else ''}\n"
                          f"stride {run['output_stride']}")
            ours.append(run["images_per_s"])
            theirs.append(official)
    for run in results.get("train", []):
        if run["dtype"] == "float32":
            labels.append(f"train step{' XLA' if run.get('jit_compile') else ''}\n"
                          f"stride {run['output_stride']}")
            ours.append(run["images_per_s"])
            theirs.append(OFFICIAL["train_images_per_s"])
    if labels:
        xs = range(len(labels))
        right.bar([x - 0.2 for x in xs], theirs, 0.4, label="deeplab2 (issue figures)")
        right.bar([x + 0.2 for x in xs], ours, 0.4, label="axial-keras (this run)")
        right.set_xticks(list(xs))
        right.set_xticklabels(labels)
        right.set_ylabel("images/s")
        right.set_title("axial_resnet_s, 224 px, batch 8, float32")
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
