"""Ratios against the targets, what limits a missed one, the printed summary and the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: name -> (description, target, "min" when the value must reach the target, "max" when under)
TARGETS: dict[str, tuple[str, float, str]] = {
    "e2e_over_triton_ceiling": ("end to end / Triton ceiling", 0.9, "min"),
    "e2e_over_naive": ("end to end / naive consumer", 2.0, "min"),
    "peak_rss_large_over_small_backlog": ("peak memory large / small backlog", 1.2, "max"),
    "p99_latency_s_at_50pct_load": ("p99 produce-to-searchable at 50% load (s)", 2.0, "max"),
    # per consumer CPU second: on a shared machine other processes take part of the consumer's
    # core, which moves images/s but not CPU per image (the JSON keeps the rate ratios too)
    "bound_over_decode_floor": ("consumer-bound file:// / decode floor, per CPU s", 0.85, "min"),
    "bound_main_thread_ms_per_image": ("consumer-bound main-thread CPU ms/image", 0.3, "max"),
    "bound_http_over_file": ("consumer-bound http:// / file://, per CPU s", 0.95, "min"),
    "bound_s3_over_file": ("consumer-bound s3:// / file://, per CPU s", 0.95, "min"),
}


#: The consumer's images/s over the Quix Streams peer's, at each backlog size of that section.
QUIX_TARGET = 2.0
#: The consumer's rate from its first message polled over the Triton ceiling, by backlog size:
#: a short backlog pays its ramp (the first batches filling) inside the figure.
RAMP_TARGETS: dict[int, float] = {600: 0.9, 3000: 0.95}

#: A CPU busier than this over a window counts as saturated.
SATURATED = 0.95


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def ceiling_of(results: dict[str, Any]) -> tuple[float | None, str]:
    """The Triton ceiling the end-to-end rate is held against, and where it comes from.

    The mean of the windows just before and just after the end-to-end run at the sweep's best
    setting when they were taken; otherwise the sweep's best point (the maximum of many short
    windows: an optimistic figure on a shared machine).
    """
    bracket = _get(results, "ceiling", "images_per_s")
    if bracket:
        return bracket, "bracketing the end-to-end run"
    return _get(results, "stages", "triton", "best", "images_per_s"), "the sweep's best point"


def ratios(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every target ratio that the sections run allow, with its target and verdict."""
    e2e = _get(results, "end_to_end", "images_per_s")
    ceiling, _ = ceiling_of(results)
    naive = _get(results, "naive", "images_per_s")
    small = _get(results, "memory", "small", "peak_rss_mib")
    large = _get(results, "memory", "large", "peak_rss_mib")
    level50 = next(
        (lv for lv in _get(results, "latency", "levels") or [] if lv["load_fraction"] == 0.5),
        None,
    )
    bound_file = _get(results, "consumer_bound", "sources", "file") or {}
    values = {
        "bound_over_decode_floor": bound_file.get("cpu_over_decode_floor"),
        "bound_main_thread_ms_per_image": bound_file.get("main_thread_cpu_ms_per_image"),
        "bound_http_over_file": _get(
            results, "consumer_bound", "ratios", "http_over_file_per_cpu_s"
        ),
        "bound_s3_over_file": _get(results, "consumer_bound", "ratios", "s3_over_file_per_cpu_s"),
        "e2e_over_triton_ceiling": e2e / ceiling if e2e and ceiling else None,
        "e2e_over_naive": e2e / naive if e2e and naive else None,
        "peak_rss_large_over_small_backlog": large / small if large and small else None,
        "p99_latency_s_at_50pct_load": level50.get("p99_s") if level50 else None,
    }
    for size, run in (_get(results, "quix", "runs") or {}).items():
        values[f"consumer_over_quix_{size}"] = run.get("ratio_from_first_poll") or run.get("ratio")
        if int(size) in RAMP_TARGETS:
            values[f"from_first_poll_over_ceiling_{size}"] = run.get("over_ceiling_from_first_poll")
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        label, target, kind = TARGETS.get(name) or _sized_target(name)
        if kind == "min":
            met = value >= target
        else:  # the latency bound is strict ("under 2 s"), the memory bound inclusive
            met = value < target if name == "p99_latency_s_at_50pct_load" else value <= target
        out[name] = {
            "label": label,
            "value": round(value, 3),
            "target": target,
            "kind": kind,
            "met": met,
            "miss_pct": 0.0 if met else round(100 * abs(value - target) / target, 1),
        }
    return out


def _sized_target(name: str) -> tuple[str, float, str]:
    """The target of a figure taken at one backlog size: against the Quix Streams peer, or the
    rate from the first message polled against the Triton ceiling."""
    size = name.rsplit("_", 1)[-1]
    if name.startswith("from_first_poll_over_ceiling_"):
        return (
            f"from the first poll / Triton ceiling, {size} messages",
            RAMP_TARGETS[int(size)],
            "min",
        )
    return (f"consumer / Quix Streams peer, {size} messages", QUIX_TARGET, "min")


def _point(section: dict[str, Any] | None, **match: Any) -> dict[str, Any]:
    """The sweep point of ``section`` whose settings equal ``match``, else its best point."""
    if not section:
        return {}
    for point in section.get("sweep", []):
        if all(point.get(k) == v for k, v in match.items()):
            return point
    return section.get("best") or {}


def cost_model(results: dict[str, Any]) -> dict[str, Any] | None:
    """CPU milliseconds per image on the consumer's core(s), stage by stage, from the stages alone.

    Each stage is taken at the consumer's own settings (I/O pool size, micro-batch, request size
    and concurrency, write group), plus Kafka's broker CPU per image from the end-to-end run. The
    sum bounds what one core can do whatever the overlap: 1000 / sum images/s.
    """
    stages = results.get("stages")
    if not stages:
        return None
    settings = results.get("consumer_settings", {})
    fetch = _point(stages.get("fetch_decode"), io_threads=settings.get("io_threads"))
    # a micro-batch runs through the JAX step in chunks of the largest compiled bucket
    buckets = settings.get("preprocess_buckets") or [settings.get("batch_size")]
    chunk = min(max(buckets), settings.get("batch_size") or max(buckets))
    pre = _point(stages.get("preprocess"), batch_size=chunk)
    triton = _point(
        stages.get("triton"),
        concurrency=settings.get("infer_threads"),
        batch_size=settings.get("infer_batch_size"),
    )
    write = _point(stages.get("milvus_upsert"), rows_per_group=settings.get("write_batch_rows"))
    parts = {
        "fetch + decode + fit (I/O pool)": fetch.get("cpu_ms_per_image"),
        f"JAX preprocess, chunks of {pre.get('batch_size')}": pre.get("cpu_ms_per_image"),
        "Triton client (gRPC, serialization)": triton.get("client_cpu_ms_per_image"),
        "Milvus writer (client)": write.get("client_cpu_ms_per_row"),
        "Milvus server": write.get("server_cpu_ms_per_row"),
    }
    kafka = _get(results, "end_to_end", "server_cpu_s_per_image", "kafka")
    if kafka is not None:
        parts["Kafka broker (from the end-to-end run)"] = round(1000 * kafka, 3)
    known = {k: v for k, v in parts.items() if v is not None}
    total = sum(known.values())
    cores = (results.get("layout") or {}).get("consumer_cpus") or ""
    n_cores = len(cores.split(",")) if cores else 1
    return {
        "ms_per_image": known,
        "total_ms_per_image": round(total, 2),
        "bound_images_per_s": round(1000 * n_cores / total, 1) if total else None,
        "consumer_cores": n_cores,
    }


def _saturation(results: dict[str, Any], run: dict[str, Any]) -> str:
    """Which side was saturated over a run's window: the consumer's CPUs, the model's, or none."""
    layout = results.get("layout") or {}
    busy = (run.get("machine") or {}).get("cpu_busy") or {}
    if not layout.get("pinned") or not busy:
        return ""

    def mean_busy(cpus: str | None) -> float | None:
        values = [busy[c] for c in (cpus or "").split(",") if c in busy]
        return sum(values) / len(values) if values else None

    consumer = mean_busy(layout.get("consumer_cpus"))
    model = mean_busy(layout.get("model_cpus"))
    if consumer is None or model is None:
        return ""
    if consumer >= SATURATED:
        return (
            f"The consumer's CPU(s) were saturated ({consumer:.0%} busy): the rate is bound by "
            "the CPU each image costs there."
        )
    if model >= SATURATED:
        return f"The model's CPU(s) were saturated ({model:.0%} busy)."
    return (
        f"Neither side was saturated (consumer's CPU(s) {consumer:.0%} busy, model's "
        f"{model:.0%}): the gap is in how the engine keeps requests in flight, not in CPU."
    )


def findings(results: dict[str, Any], table: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences: by how much each missed target is missed and what limits it."""
    out: list[str] = []
    e2e = results.get("end_to_end") or {}
    cores = results.get("layout", {}).get("consumer_cpus") or results.get("layout", {}).get(
        "available", ""
    )
    n_cores = len(cores.split(",")) if cores else 1
    cpu = e2e.get("cpu_s_per_image")
    ceiling, _ = ceiling_of(results)
    entry = table.get("e2e_over_triton_ceiling")
    if entry and not entry["met"]:
        text = (
            f"End to end reached {e2e.get('images_per_s')} images/s, {entry['value']:.2f}x the "
            f"Triton ceiling of {ceiling} images/s: {entry['miss_pct']}% short of the 0.9x target."
        )
        servers = e2e.get("server_cpu_s_per_image", {})
        side = sum(v for k, v in servers.items() if k in ("kafka", "milvus"))
        if cpu:
            budget = n_cores / (cpu + side) if (cpu + side) else None
            text += (
                f" The consumer spent {cpu:.4f} CPU s per image (so {n_cores} core(s) alone cap "
                f"it at {n_cores / cpu:.1f} images/s); Kafka and Milvus on the same core(s) "
                f"added {side:.4f} s per image"
            )
            if budget:
                text += f", which leaves room for {budget:.1f} images/s at most."
            else:
                text += "."
        busy = e2e.get("server_cores_busy", {}).get("triton")
        if busy is not None:
            text += f" Triton's process tree was busy {busy:.2f} core(s) on average."
        share = e2e.get("machine") or {}
        if share:
            text += (
                f" Over the same window the CPUs were busy {share.get('cpu_busy')} (fraction of "
                f"each), {share.get('other_cores_busy')} core(s) of it by other processes on the "
                "machine."
            )
        verdict = _saturation(results, e2e)
        if verdict:
            text += " " + verdict
        model = results.get("cost_model") or {}
        if model.get("total_ms_per_image"):
            worst = max(model["ms_per_image"].items(), key=lambda kv: kv[1])
            text += (
                f" Measured alone, the stages cost {model['total_ms_per_image']} CPU ms per "
                f"image on the consumer's core(s) (largest: {worst[0]}, {worst[1]} ms), a bound of "
                f"{model['bound_images_per_s']} images/s; 0.9x the ceiling needs at most "
                f"{1000 * model['consumer_cores'] / (0.9 * ceiling):.1f} ms."
                if ceiling
                else ""
            )
        out.append(text)
    entry = table.get("e2e_over_naive")
    if entry and not entry["met"]:
        out.append(
            f"End to end is {entry['value']:.2f}x the naive consumer, {entry['miss_pct']}% short "
            "of 2x: the overlap of stages gains little when one stage (see the profile) "
            "dominates the consumer's core."
        )
    entry = table.get("peak_rss_large_over_small_backlog")
    if entry and not entry["met"]:
        small = _get(results, "memory", "small", "peak_rss_mib")
        large = _get(results, "memory", "large", "peak_rss_mib")
        out.append(
            f"Peak memory grew from {small} MiB (small backlog) to {large} MiB (large backlog), "
            f"{entry['value']:.2f}x, {entry['miss_pct']}% over the 1.2x bound: something holds "
            "per-message state beyond the in-flight bound (e.g. the Kafka client's prefetch "
            "queue, queued.max.messages.kbytes)."
        )
    entry = table.get("p99_latency_s_at_50pct_load")
    if entry and not entry["met"]:
        level = next(lv for lv in results["latency"]["levels"] if lv["load_fraction"] == 0.5)
        stages = sorted(
            (level.get("stage_profile") or {}).items(),
            key=lambda kv: -kv[1]["ms_per_observation"],
        )[:3]
        slowest = ", ".join(f"{k} {v['ms_per_observation']} ms" for k, v in stages)
        out.append(
            f"p99 produce-to-searchable at 50% load is {entry['value']} s, {entry['miss_pct']}% "
            f"over the 2 s target; mean micro-batch {level.get('batch_size_mean')}, longest "
            f"stages per call: {slowest}; the consumer kept {level.get('consumer_cores_busy')} "
            f"core(s) busy; the CPUs were busy {(level.get('machine') or {}).get('cpu_busy')}, "
            f"{(level.get('machine') or {}).get('other_cores_busy')} core(s) of it by other "
            "processes."
        )
    return out


def _stage_lines(results: dict[str, Any]) -> list[str]:
    stages = results.get("stages", {})
    lines = []
    for name, key, unit in (
        ("fetch+decode", "fetch_decode", "images_per_s"),
        ("JAX preprocess", "preprocess", "images_per_s"),
        ("Milvus upsert", "milvus_upsert", "rows_per_s"),
        ("Triton (sweep)", "triton", "images_per_s"),
    ):
        best = (stages.get(key) or {}).get("best") or {}
        if best:
            settings = ", ".join(
                f"{k}={v}"
                for k, v in best.items()
                if k not in (unit, "images", "rows", "seconds", "request_ms_p50")
            )
            lines.append(
                f"  {name:<16} {best[unit]:>9.1f} {unit.replace('_per_s', '/s'):<9} ({settings})"
            )
    bracket = results.get("ceiling") or {}
    if bracket:
        lines.append(
            f"  {'Triton ceiling':<16} {bracket['images_per_s']:>9.1f} images/s  "
            f"({bracket['concurrency']} x {bracket['batch_size']}, {bracket['window_s']:g} s just "
            f"before ({bracket['before']['images_per_s']}) and after "
            f"({bracket['after']['images_per_s']}) the end-to-end run)"
        )
    return lines


def _run_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, key in (("naive", "naive"), ("end to end", "end_to_end"), ("unpinned", "unpinned")):
        sec = results.get(key) or {}
        if sec.get("images_per_s"):
            other = (sec.get("machine") or {}).get("other_cores_busy")
            lines.append(
                f"  {name:<16} {sec['images_per_s']:>9.1f} images/s  "
                f"({sec.get('cpu_s_per_image', 0):.4f} consumer CPU s per image"
                + (f"; other processes busy {other} core(s))" if other is not None else ")")
            )
    return lines


def _latency_line(level: dict[str, Any]) -> str:
    missing = level["not_found_in_time"]
    machine = level.get("machine")
    return (
        f"  latency at {int(level['load_fraction'] * 100):>3}% ({level['rate_per_s']}/s): "
        f"p50 {level['p50_s']} s, p95 {level['p95_s']} s, p99 {level['p99_s']} s"
        + (f", {missing} not found" if missing else "")
        + (f" (other processes busy {machine['other_cores_busy']} core(s))" if machine else "")
    )


def _memory_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for label in ("small", "large"):
        mem = _get(results, "memory", label)
        if mem:
            lines.append(
                f"  peak RSS, {mem['messages']}-message backlog: {mem['peak_rss_mib']} MiB "
                f"({mem['ingested']} ingested in the window)"
            )
    return lines


def _cost_lines(results: dict[str, Any]) -> list[str]:
    model = results.get("cost_model") or {}
    if not model.get("ms_per_image"):
        return []
    lines = ["", "== consumer-core CPU per image, from the stages alone =="]
    for name, ms in model["ms_per_image"].items():
        lines.append(f"  {name:<44} {ms:>8.2f} ms")
    lines.append(
        f"  {'total':<44} {model['total_ms_per_image']:>8.2f} ms -> at most "
        f"{model['bound_images_per_s']} images/s on {model['consumer_cores']} core(s)"
    )
    return lines


def _bound_lines(results: dict[str, Any]) -> list[str]:
    section = results.get("consumer_bound") or {}
    floor = section.get("decode_floor") or {}
    if not floor:
        return []
    lines = [
        "",
        "== consumer-bound: near-free model, photo-sized JPEGs, one consumer core ==",
        f"  ({(section.get('layout') or {}).get('note')})",
        f"  {'decode floor':<16} {floor['images_per_s']:>9.1f} images/s  "
        f"({floor['cpu_ms_per_image']} CPU ms per image, decode alone, one thread)",
    ]
    for source, fig in (section.get("sources") or {}).items():
        threads = ", ".join(
            f"{k} {v}" for k, v in fig["thread_cpu_ms_per_image"].items() if v >= 0.05
        )
        lines.append(
            f"  {source + '://':<16} {fig['images_per_s']:>9.1f} images/s  "
            f"({fig['over_decode_floor']}x the floor's rate, "
            f"{fig['cpu_over_decode_floor']}x its CPU per image; {fig['cpu_ms_per_image']} CPU "
            f"ms per image: {threads}; others took {fig['core_busy_by_others']} of the core)"
        )
    return lines


def _ratio_lines(results: dict[str, Any], table: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["", "== ratios =="]
    for entry in table.values():
        op = ">=" if entry["kind"] == "min" else "<"
        verdict = "ok" if entry["met"] else f"MISSED by {entry['miss_pct']}%"
        lines.append(
            f"  {entry['label']:<44} {entry['value']:>8.3f}  (target {op} {entry['target']})  "
            f"{verdict}"
        )
    e2e = _get(results, "end_to_end", "images_per_s")
    sweep_best = _get(results, "stages", "triton", "best", "images_per_s")
    ceiling, source = ceiling_of(results)
    if e2e and ceiling:
        lines.append(f"  (the ceiling: {ceiling} images/s, {source})")
        if sweep_best and sweep_best != ceiling:
            lines.append(
                f"  (against the sweep's best point, {sweep_best} images/s: {e2e / sweep_best:.3f})"
            )
    return lines


def print_summary(results: dict[str, Any], table: dict[str, dict[str, Any]]) -> None:
    """The headline numbers and the ratios against their targets."""
    lines = ["", "== results =="]
    if results.get("quick"):
        lines.append(
            "  (--quick: these figures show that the harness runs, not how fast the pipeline is)"
        )
    lines += _stage_lines(results)
    lines += _run_lines(results)
    lines += [_latency_line(level) for level in _get(results, "latency", "levels") or []]
    lines += _memory_lines(results)
    lines += _cost_lines(results)
    lines += _bound_lines(results)
    lines += _ratio_lines(results, table)
    for text in results.get("findings", []):
        lines.append("")
        lines.append("  - " + text)
    print("\n".join(lines), flush=True)


def _level_label(level: dict[str, Any]) -> str:
    label = f"{int(level['load_fraction'] * 100)}% = {level['rate_per_s']}/s"
    other = (level.get("machine") or {}).get("other_cores_busy")
    return label + (f"\nother load {other:.2f}" if other is not None else "")


def _bound_panel(ax: Any, results: dict[str, Any]) -> None:
    """Consumer-bound: the decode floor and each source's rate on the one consumer core."""
    section = results.get("consumer_bound") or {}
    floor = (section.get("decode_floor") or {}).get("images_per_s")
    bars = [("decode floor", floor, "#bbbbbb")] if floor else []
    for source, fig in (section.get("sources") or {}).items():
        bars.append((f"{source}://", fig["images_per_s"], "#66c2a5"))
    if bars:
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
        for i, (_name, value, _colour) in enumerate(bars):
            ratio = f"\n{value / floor:.2f}x" if floor and i else ""
            ax.text(i, value * 1.01, f"{value:.1f}{ratio}", ha="center", fontsize=9)
        if floor:
            ax.axhline(0.85 * floor, color="black", linestyle="--", linewidth=1)
            ax.text(len(bars) - 0.5, 0.86 * floor, "0.85x floor", fontsize=8, ha="right")
        ax.set_ylabel("images/s on one consumer core")
    ax.set_title("Consumer-bound (near-free model, photos)")


def chart(results: dict[str, Any], path: Path) -> None:
    """A PNG: per-stage rates against end to end, latency percentiles, peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = results.get("stages", {})
    bars: list[tuple[str, float, str]] = []
    for name, key, unit, colour in (
        ("fetch + decode", "fetch_decode", "images_per_s", "#8da0cb"),
        ("JAX preprocess", "preprocess", "images_per_s", "#8da0cb"),
        ("Milvus upsert (rows)", "milvus_upsert", "rows_per_s", "#8da0cb"),
        ("Triton, sweep's best point", "triton", "images_per_s", "#f4c2dc"),
    ):
        best = (stages.get(key) or {}).get("best") or {}
        if best:
            bars.append((name, float(best[unit]), colour))
    bracket = _get(results, "ceiling", "images_per_s")
    if bracket:
        bars.append(("Triton ceiling (bracketing e2e)", float(bracket), "#e78ac3"))
    for name, key, colour in (
        ("naive consumer", "naive", "#bbbbbb"),
        ("end to end (pinned)", "end_to_end", "#66c2a5"),
        ("end to end (unpinned)", "unpinned", "#a6d854"),
    ):
        rate = (results.get(key) or {}).get("images_per_s")
        if rate:
            bars.append((name, float(rate), colour))
    fig, axes = plt.subplots(
        1, 4, figsize=(21, 5.2), gridspec_kw={"width_ratios": [1.5, 1, 0.7, 0.9]}
    )
    ax = axes[0]
    names = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(names, values, color=[b[2] for b in bars][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("per second, log scale (images; rows for Milvus)")
    ax.set_title("Stages alone vs end to end")
    for y, v in enumerate(values):
        ax.text(v * 1.05, y, f"{v:,.1f}", va="center", fontsize=9)
    ceiling, _ = ceiling_of(results)
    if ceiling:
        ax.axvline(0.9 * ceiling, color="#e78ac3", linestyle="--", linewidth=1)
        ax.text(0.9 * ceiling, -0.75, " 0.9x ceiling", color="#c0508f", fontsize=8)
    ax.set_xlim(right=max(values) * 4 if values else 1)

    ax = axes[1]
    levels = _get(results, "latency", "levels") or []
    if levels:
        import numpy as np

        x = np.arange(len(levels))
        width = 0.26
        for i, (key, colour) in enumerate(
            (("p50_s", "#66c2a5"), ("p95_s", "#fc8d62"), ("p99_s", "#e15759"))
        ):
            vals = [lv.get(key) or 0.0 for lv in levels]
            ax.bar(x + (i - 1) * width, vals, width, label=key.replace("_s", ""), color=colour)
            if key == "p99_s":
                for xi, v in zip(x, vals, strict=True):
                    ax.text(xi + width, v * 1.03, f"{v:.2f}", ha="center", fontsize=8)
        if max(lv.get("p99_s") or 0.0 for lv in levels) > 8.0:
            ax.set_yscale("log")  # an overloaded level would flatten the others
        ax.set_xticks(x, [_level_label(lv) for lv in levels], fontsize=7)
        ax.axhline(2.0, color="black", linestyle="--", linewidth=1)
        ax.text(len(levels) - 0.55, 2.03, "2 s target (p99 at 50%)", fontsize=8, ha="right")
        ax.set_ylabel("seconds")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.set_title("Produce-to-searchable latency by load", pad=20)

    ax = axes[2]
    mem = [
        (f"{m['messages']:,} backlog", m["peak_rss_mib"])
        for m in (_get(results, "memory", "small"), _get(results, "memory", "large"))
        if m
    ]
    if mem:
        ax.bar([m[0] for m in mem], [m[1] for m in mem], color=["#8da0cb", "#fc8d62"])
        for i, m in enumerate(mem):
            ax.text(i, m[1] * 1.01, f"{m[1]:.0f}", ha="center", fontsize=9)
        ax.set_ylabel("MiB")
    ax.set_title("Consumer peak RSS")
    _bound_panel(axes[3], results)
    machine = results.get("machine", {})
    layout = results.get("layout", {})
    where = (
        f"model on CPU {layout.get('model_cpus')}, the rest on CPU {layout.get('consumer_cpus')}"
        if layout.get("pinned")
        else "unpinned"
    )
    fig.suptitle(
        f"image-embedder benchmark {results.get('run_id', '')} - {machine.get('cpu_model', '')}, "
        f"{machine.get('cpus_online', '?')} CPUs; {where}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
