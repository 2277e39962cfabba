"""Figures of a harness run checked against the targets, as a Markdown table and a plot.

deeplab2 cannot run in this environment, so its figures come only from a baseline file
(`choose_baseline`: deeplab2 measured on a named machine with the same float32 2048^3
matmul yardstick this harness measures in every process). A figure is compared with
deeplab2's only when the baseline was measured on a CPU of this machine's instruction set
(AVX-512F or not), this run's yardstick (the median over its processes) is within
`YARDSTICK_TOLERANCE` of the baseline's, and so is the yardstick of the figure's own
process. Otherwise the report says that the machines differ and gives no ratio; the
fractions of the yardstick are this run's machine-relative figures either way.
"""

import glob
import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Tuple

from absl import logging

YARDSTICK_KEY = "yardstick_matmul_2048_float32_gflops"
YARDSTICK_SIZE = 2048
YARDSTICK_TOLERANCE = 0.15
# The performance issue's targets, as multiples of deeplab2's figure on the same machine.
TRAIN_SPEEDUP_TARGET = 2.0
TRAIN_MEMORY_TARGET = 0.6
FORWARD_SPEEDUP_TARGET = 3.0
ZOO_TIME_TARGET = 0.5
ZOO_MEMORY_TARGET = 1.0
POSTPROCESS_TARGET_MS = 100.0
# This project's own targets.
PEAK_FRACTION_TARGET = 0.35
DEEPLAB_MEMORY_TARGET_GIB = 16.0
_VARIANT_NAMES = {"graph": "tf.function", "xla": "XLA", "keras": "Keras user path"}


def _avx512f(baseline: Dict) -> bool:
    return "AVX512F" in baseline["machine"]["flags"].upper().split()


def _instruction_set(avx512f: bool) -> str:
    return "with AVX-512F" if avx512f else "without AVX-512F"


def load_baselines(path: str) -> List[Tuple[str, Dict]]:
    """The baseline files at `path` (one JSON file, or every `*.json` in a folder).

    Raises:
        ValueError: naming a file that is not JSON or lacks `machine.flags` or the
            yardstick's `median`.
    """
    files = sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
    baselines = []
    for name in files:
        try:
            with open(name) as f:
                data = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot read the deeplab2 baseline {name}: {error}") from error
        if not (isinstance(_lookup(data, "machine", "flags"), str)
                and isinstance(_lookup(data, YARDSTICK_KEY, "median"), (int, float))):
            raise ValueError(f"{name} is not a deeplab2 baseline: it needs machine.flags (a "
                             f"string) and {YARDSTICK_KEY}.median (GFLOP/s).")
        baselines.append((name, data))
    return baselines


def choose_baseline(path: str, avx512f: bool) -> Dict:
    """The baseline whose CPU flags match this machine's instruction set.

    Args:
        path: str. A baseline JSON file or a folder of them.
        avx512f: bool. Whether this machine's CPU has AVX-512F.

    Returns:
        dict with `searched` (`path`), `avx512f`, `path` (the chosen file or None),
        `data` (its contents or None) and `reason` (None, or why there is no baseline).
    """
    choice = {"searched": path, "avx512f": avx512f, "path": None, "data": None, "reason": None}
    if not os.path.exists(path):
        logging.warning("No deeplab2 baseline at %s: nothing is compared with deeplab2.", path)
        choice["reason"] = f"there is no baseline file at {path}"
        return choice
    matching = [(name, data) for name, data in load_baselines(path)
                if _avx512f(data) == avx512f]
    if not matching:
        choice["reason"] = (f"no baseline in {path} was measured on a CPU "
                            f"{_instruction_set(avx512f)} like this one")
        return choice
    choice["path"], choice["data"] = matching[0]
    return choice


def _processes(results: Dict) -> List[Dict]:
    """Every measured process's result (each carries its yardstick)."""
    found = []
    for key, value in results.items():
        if key == "figures":
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and "matmul_size" in item:
                found.append(item)
    return found


def yardstick(results: Dict) -> Dict:
    """Whether this run compares with deeplab2, and why (in words).

    Returns:
        dict with `compared` (bool), `baseline_gflops`, `run_gflops` (median over this
        run's processes that measured the 2048^3 yardstick; None without any),
        `difference` (relative) and `text` (the sentence the report prints).
    """
    choice = results.get("baseline") or {"reason": "no baseline was given", "data": None}
    sticks = [p["matmul_gflops"] for p in _processes(results)
              if p.get("matmul_size") == YARDSTICK_SIZE]
    check = {"compared": False, "baseline_gflops": None,
             "run_gflops": statistics.median(sticks) if sticks else None, "difference": None}
    if choice["data"] is None:
        check["text"] = (f"deeplab2 is not compared: the machines differ ({choice['reason']}). "
                         "The fractions of the yardstick below are this run's own.")
        return check
    base = choice["data"][YARDSTICK_KEY]["median"]
    machine = choice["data"]["machine"]
    check["baseline_gflops"] = base
    source = (f"{os.path.basename(choice['path'])} ({machine.get('cpu', '?')}, "
              f"{machine['flags']}; yardstick {base:.0f} GFLOP/s)")
    if not sticks:
        check["text"] = (f"deeplab2 is not compared: this run measured no {YARDSTICK_SIZE}^3 "
                         f"matmul yardstick (a quick run measures a smaller one), so it cannot "
                         f"be set against {source}.")
        return check
    run = check["run_gflops"]
    check["difference"] = run / base - 1.0
    if abs(check["difference"]) > YARDSTICK_TOLERANCE:
        check["text"] = (f"deeplab2 is not compared: the machines differ. This run's float32 "
                         f"matmul yardstick reads {run:.0f} GFLOP/s (median of {len(sticks)} "
                         f"processes), {100 * check['difference']:+.0f}% from the "
                         f"{base:.0f} GFLOP/s of {source}, more than the "
                         f"{100 * YARDSTICK_TOLERANCE:.0f}% allowed. The fractions of the "
                         "yardstick below are this run's own.")
        return check
    check["compared"] = True
    check["text"] = (f"Compared with deeplab2 as measured in {source}: this run's yardstick "
                     f"reads {run:.0f} GFLOP/s (median of {len(sticks)} processes, "
                     f"{100 * check['difference']:+.0f}%); a figure carries a ratio where its "
                     f"own process read within {100 * YARDSTICK_TOLERANCE:.0f}% too.")
    return check


def log_log_slope(points: List[Dict]) -> Optional[float]:
    """Least-squares slope of log(ms) against log(length): 1 linear, 2 quadratic."""
    if len(points) < 2:
        return None
    xs = [math.log(p["length"]) for p in points]
    ys = [math.log(p["ms"]) for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def _lookup(data: Any, *keys: str) -> Any:
    """`data[key0][key1]...`, or None where a level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _variant(run: Dict) -> str:
    name = _VARIANT_NAMES[run["variant"]]
    if run["variant"] == "keras":
        name += f", jit_compile={run['jit_compile']}"
    return name


class _Rows:
    """The figures table being built: plain rows, and rows set against deeplab2."""

    def __init__(self, check: Dict):
        self.check = check
        self.rows: List[Dict] = []

    def add(self, name: str, value: float, unit: str, target: Optional[float] = None,
            op: str = ">=", matmul: Optional[float] = None, note: str = "",
            ratio: Optional[float] = None, goal: Optional[str] = None,
            comparison: str = "", plot_label: Optional[str] = None) -> Dict:
        met = None if target is None else {">=": value >= target, "<=": value <= target,
                                           "<": value < target}[op]
        row = {"figure": name, "value": value, "unit": unit, "op": op, "target": target,
               "goal": goal, "met": met, "ratio": ratio, "comparison": comparison,
               "matmul_gflops": matmul, "note": note, "plot_label": plot_label}
        self.rows.append(row)
        return row

    def versus(self, name: str, value: float, unit: str, theirs: Optional[float],
               factor: Optional[float], op: str, run: Dict, note: str = "",
               plot_label: Optional[str] = None) -> Dict:
        """A row set against deeplab2's figure `theirs` where this run and the row's own
        process compare: target `factor` x theirs (none for a None factor), ratio value /
        theirs; elsewhere no target and `comparison` says why."""
        matmul, base = run.get("matmul_gflops"), self.check["baseline_gflops"]
        goal = None if factor is None else f"{op} {factor:g}x deeplab2"
        notes = [note] if note else []
        if theirs is None or not self.check["compared"]:
            comparison = "no deeplab2 figure" if self.check["compared"] else "not compared"
            return self.add(name, value, unit, None, op, matmul, note, goal=goal,
                            comparison=comparison, plot_label=plot_label)
        if (run.get("matmul_size") != YARDSTICK_SIZE
                or abs(matmul / base - 1.0) > YARDSTICK_TOLERANCE):
            notes.append(f"not compared: this process's yardstick read {matmul:.0f} GFLOP/s "
                         f"({100 * (matmul / base - 1.0):+.0f}%), the machines differ")
            return self.add(name, value, unit, None, op, matmul, "; ".join(notes), goal=goal,
                            comparison="not compared", plot_label=plot_label)
        return self.add(name, value, unit, None if factor is None else factor * theirs, op,
                        matmul, "; ".join([f"deeplab2: {_format(theirs, unit)}"] + notes),
                        ratio=value / theirs, goal=goal, plot_label=plot_label)


def figures(results: Dict) -> List[Dict]:
    """The figures: measured value, target, whether it is met, ratio to deeplab2, yardstick.

    A row whose target is a multiple of deeplab2's figure (`goal`) but that this run
    cannot compare has target, `met` and `ratio` None and the reason in `comparison`.
    """
    check = yardstick(results)
    data = (results.get("baseline") or {}).get("data")
    table = _Rows(check)
    _classifier_figures(results, data, table)
    if "deeplab_train" in results:
        run = results["deeplab_train"]
        label = (f"train step {run['model']}, {run['height']}x{run['width']} crops, batch "
                 f"{run['batch']}, spans {_spans(run['spans'])}")
        table.add(f"{label}: images/s", run["images_per_s"], "images/s",
                  matmul=run["matmul_gflops"],
                  note=f"{run['loss']}; CPU {run['cpu_median_s']:.2f} s/step")
        table.add(f"{label}: peak memory", run["peak_rss_gib"], "GiB",
                  matmul=run["matmul_gflops"])
    if "deeplab" in results:
        run = results["deeplab"]
        table.add(f"{run['model']} {run['height']}x{run['width']} forward, spans "
                  f"{_spans(run['spans'])}: peak memory", run["peak_rss_gib"], "GiB",
                  DEEPLAB_MEMORY_TARGET_GIB, "<=", run["matmul_gflops"],
                  f"{run['seconds_per_image']:.2f} s/image")
    _zoo_figures(results.get("zoo_export", []), data, table)
    if "postprocess" in results:
        run = results["postprocess"]
        for scene in run["scenes"]:
            table.add(f"post-processing {run['height']}x{run['width']}, {run['num_classes']} "
                      f"classes, {run['centers']} centres ({scene['scene']} scene)",
                      scene["ms"], "ms", POSTPROCESS_TARGET_MS, "<", run["matmul_gflops"],
                      f"{scene['instances']} instances")
    if "attention" in results:
        run = results["attention"]
        for name, points in run["curves"].items():
            slope = log_log_slope(points)
            if slope is None:
                continue
            lengths = f"L = {points[0]['length']}..{points[-1]['length']}"
            if name.startswith("local"):
                table.add(f"{name} attention time growth exponent ({lengths})", slope,
                          "log-log slope", 1.2, "<=", run["matmul_gflops"], "1 = linear")
            else:
                table.add(f"global attention time growth exponent ({lengths})", slope,
                          "log-log slope", matmul=run["matmul_gflops"], note="2 = quadratic")
    return table.rows


def _classifier_figures(results: Dict, data: Optional[Dict], table: _Rows) -> None:
    """The train and forward rows of the classifier (deeplab2's figures for its model,
    size and batch, where the baseline has them)."""

    def theirs_for(run):
        return _lookup(data, f"{run['model']}_{run['size']}_batch{run['batch']}")

    for run in results.get("train", []):
        step = (_lookup(theirs_for(run),
                        f"train_step_output_stride_{run['output_stride']}_no_recompute")
                if run["dtype"] == "float32" else None)
        label = (f"train step {run['model']}, {run['size']} px, batch {run['batch']}, stride "
                 f"{run['output_stride']}, {run['dtype']}, {_variant(run)}")
        table.versus(f"{label}: images/s", run["images_per_s"], "images/s",
                     _lookup(step, "images_per_s"), TRAIN_SPEEDUP_TARGET, ">=", run,
                     f"CPU {run['cpu_median_s']:.2f} s/step",
                     plot_label=(f"train {run['variant']}\nstride {run['output_stride']}"
                                 if run["dtype"] == "float32" else None))
        table.versus(f"{label}: peak memory", run["peak_rss_gib"], "GiB",
                     _lookup(step, "peak_rss_gib"), TRAIN_MEMORY_TARGET, "<=", run)
    graph32 = {r["output_stride"]: r for r in results.get("forward", [])
               if r["dtype"] == "float32" and r["variant"] == "graph"}
    for run in results.get("forward", []):
        label = (f"forward {run['model']}, {run['size']} px, batch {run['batch']}, stride "
                 f"{run['output_stride']}, {run['dtype']}, {_variant(run)}")
        graph = graph32.get(run["output_stride"])
        note = (f"{run['images_per_s'] / graph['images_per_s']:.2f}x the float32 tf.function"
                if graph is not None and graph is not run else "")
        if run["dtype"] != "float32":
            table.add(f"{label}: images/s", run["images_per_s"], "images/s",
                      matmul=run["matmul_gflops"], note=note)
            continue  # the yardstick is the float32 matmul: only float32 runs compare
        theirs = _lookup(theirs_for(run), f"forward_output_stride_{run['output_stride']}")
        speed = table.versus(f"{label}: images/s", run["images_per_s"], "images/s",
                             _lookup(theirs, "images_per_s"), FORWARD_SPEEDUP_TARGET, ">=",
                             run, note, plot_label=f"forward {run['variant']}\n"
                                                   f"stride {run['output_stride']}")
        note = f"{run['gflops']:.1f} GFLOP/s of {run['matmul_gflops']:.0f}"
        if speed["ratio"] is not None:
            gflops = (2.0 * theirs_for(run)["multiply_adds_per_image"] * theirs["images_per_s"]
                      / 1e9)
            note += f"; deeplab2: {100 * gflops / table.check['baseline_gflops']:.1f}%"
        table.add(f"{label}: GFLOP/s / float32 matmul yardstick", run["peak_fraction"],
                  "fraction", PEAK_FRACTION_TARGET, ">=", run["matmul_gflops"], note)


def _spans(spans: Optional[List]) -> str:
    if spans is None:
        return "global"
    return ",".join("none" if s is None else str(s) for s in spans)


def _zoo_figures(runs: List[Dict], data: Optional[Dict], table: _Rows) -> None:
    """The zoo model's rows: export and conversion time, then per served format its
    s/image and peak memory (against deeplab2's model at the same size) and its model
    GFLOP/s as a fraction of the yardstick."""
    exports = {run["variant"]: run for run in runs if run["stage"] == "export"}
    for run in runs:
        export = exports[run["variant"]]
        size = f"{export['height']}x{export['width']}"
        label = (f"zoo {export['model']}{' (tiny stand-in)' if export['tiny'] else ''} {size},"
                 f" spans {_spans(export['spans'])}, {export.get('dtype', 'float32')}")
        theirs = None if export["tiny"] else _lookup(
            data, f"cityscapes_panoptic_{size}_batch1", export["model"])
        if run["stage"] == "export":
            table.add(f"{label}: SavedModel export s", run["export_s"], "s",
                      matmul=run["matmul_gflops"],
                      note=f"{run['trainable_params']:,} parameters; "
                           f"{run['saved_model_bytes'] / 1e6:.0f} MB")
            if "litert_convert_s" in run:
                table.add(f"{label}: LiteRT float32 conversion s", run["litert_convert_s"], "s",
                          matmul=run["matmul_gflops"],
                          note=f"{run['litert_bytes'] / 1e6:.0f} MB")
            continue
        served = run["stage"] == "serve"
        what = f"SavedModel {run['signature']}" if served else "LiteRT float32"
        if run.get("signature") == "serving_default" and served:
            what += " (PNG)"
        table.versus(f"{label}: {what} s/image (post-processing included)",
                     run["seconds_per_image"], "s", _lookup(theirs, "seconds_per_image_median"),
                     ZOO_TIME_TARGET if served else None, "<=", run,
                     f"CPU {run['cpu_median_s']:.2f} s/image")
        table.versus(f"{label}: {what} peak memory", run["peak_rss_gib"], "GiB",
                     _lookup(theirs, "peak_rss_gib"), ZOO_MEMORY_TARGET if served else None,
                     "<=", run, f"{run['loaded_rss_gib']:.2f} GiB after loading")
        gflops = 2.0 * export["madds_per_image"] / run["seconds_per_image"] / 1e9
        table.add(f"{label}: {what} model GFLOP/s / float32 matmul yardstick",
                  gflops / run["matmul_gflops"], "fraction", matmul=run["matmul_gflops"],
                  note=f"{gflops:.1f} GFLOP/s of {run['matmul_gflops']:.0f} (the network's "
                       "M-Adds over the whole call)")


def _format(value, unit):
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit in ("GiB", "s"):
        return f"{value:.2f} {unit}"
    return f"{value:.2f}"


def _target(row: Dict) -> str:
    if row["target"] is not None:
        text = f"{row['op']} {_format(row['target'], row['unit'])}"
        return f"{text} ({row['goal']})" if row["goal"] else text
    return row["goal"] or ""


def markdown(results: Dict) -> str:
    """The comparison sentence, the figures table, the attention curve and the profile."""
    machine = results["machine"]
    lines = [f"`{results['command']}` ({results['created']}, {machine['cpu']}, "
             f"{machine['cores']} cores, {_instruction_set(machine.get('avx512f', False))}, "
             f"TF {results['versions']['tensorflow']})", "", yardstick(results)["text"], "",
             "| figure | measured | target | met | vs deeplab2 | matmul GFLOP/s | note |",
             "|---|---|---|---|---|---|---|"]
    for row in results["figures"]:
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        versus = f"{row['ratio']:.2f}x" if row["ratio"] is not None else row["comparison"]
        matmul = f"{row['matmul_gflops']:.0f}" if row["matmul_gflops"] else ""
        lines.append(f"| {row['figure']} | {_format(row['value'], row['unit'])} | "
                     f"{_target(row)} | {met} | {versus} | {matmul} | {row['note']} |")
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
        if run.get("train_ops"):
            lines += ["", f"Op-type shares of one {run['model']} training step (the train "
                      f"section's graph step, stride {run['train_output_stride']}):", "",
                      "| op | share | s |", "|---|---|---|"]
            for op in run["train_ops"]:
                lines.append(f"| {op['op']} | {100 * op['share']:.1f}% | {op['seconds']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: Dict, path: str) -> bool:
    """Writes the PNG (attention time vs length; images/s, with deeplab2's where compared).
    False without matplotlib."""
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
    rows = [row for row in results["figures"] if row["plot_label"]]
    if rows:
        xs = range(len(rows))
        right.bar([x + 0.2 for x in xs], [row["value"] for row in rows], 0.4,
                  label="axial-keras (this run)")
        compared = [(x, row["value"] / row["ratio"]) for x, row in zip(xs, rows)
                    if row["ratio"] is not None]
        if compared:
            right.bar([x - 0.2 for x, _ in compared], [v for _, v in compared], 0.4,
                      label="deeplab2 (baseline file)")
        right.set_xticks(list(xs))
        right.set_xticklabels([row["plot_label"] for row in rows], fontsize=7)
        right.set_ylabel("images/s")
        right.set_title("float32 images/s" + ("" if compared else "; deeplab2 not compared"))
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
