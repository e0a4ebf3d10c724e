"""What a benchmark run leaves behind: a console table, a JSON file, a markdown table and PNG plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LATENCIES = [("ttft_ms", "Time to first token"), ("tpot_ms", "Time per output token (excl. 1st)"),
             ("itl_ms", "Inter-token latency"), ("e2el_ms", "End-to-end latency")]


def console_table(result: dict) -> str:
    s, c = result["summary"], result["config"]
    rows = [("Successful requests", s["completed"]), ("Failed requests", s["failed"]),
            ("Request rate (req/s)", c["request_rate"]), ("Max concurrency", c["max_concurrency"] or "none"),
            ("Benchmark duration (s)", s["duration_s"]), ("Total input tokens", s["total_input_tokens"]),
            ("Total generated tokens", s["total_output_tokens"]), ("Request throughput (req/s)", s["request_throughput"]),
            ("Output token throughput (tok/s)", s["output_throughput"]),
            ("Total token throughput (tok/s)", s["total_token_throughput"]), ("Peak concurrency", s["peak_concurrency"])]
    if "request_goodput" in s:
        rows.append(("Request goodput (req/s)", s["request_goodput"]))
    lines = ["{s:=^56}".format(s=" Serving Benchmark Result ")]
    lines += [f"{name:<40}{value:>16.2f}" if isinstance(value, float) else f"{name:<40}{value!s:>16}"
              for name, value in rows]
    for key, title in LATENCIES:
        lines.append("{s:-^56}".format(s=f" {title} "))
        short = key.split("_")[0].upper()
        lines += [f"{stat.capitalize() if stat in ('mean', 'median') else stat.upper()} {short} (ms):".ljust(40)
                  + f"{value:>16.2f}" for stat, value in s[key].items() if stat != "std"]
    if s["errors"]:
        lines.append("{s:-^56}".format(s=" Errors "))
        lines += [f"{kind:<40}{count:>16}" for kind, count in sorted(s["errors"].items())]
    lines.append("=" * 56)
    return "\n".join(lines)


def markdown_row_header(percentile: str) -> str:
    return (f"| label | rate | max conc. | completed | failed | req/s | output tok/s | total tok/s | peak conc. | "
            f"TTFT median | TTFT {percentile} | TPOT median | TPOT {percentile} | ITL median | E2E median |\n"
            + "|---" * 15 + "|")


def markdown_row(result: dict, percentile: str) -> str:
    s, c = result["summary"], result["config"]
    return (f"| {c['label']} | {c['request_rate']} | {c['max_concurrency'] or '–'} | {s['completed']} | {s['failed']} | "
            f"{s['request_throughput']:.2f} | {s['output_throughput']:.1f} | {s['total_token_throughput']:.1f} | "
            f"{s['peak_concurrency']} | {s['ttft_ms']['median']:.0f} | {s['ttft_ms'][percentile]:.0f} | "
            f"{s['tpot_ms']['median']:.1f} | {s['tpot_ms'][percentile]:.1f} | {s['itl_ms']['median']:.1f} | "
            f"{s['e2el_ms']['median']:.0f} |")


def plot_run(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in result["requests"] if r["success"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    series = {"TTFT": [r["ttft"] for r in done], "E2E": [r["latency"] for r in done],
              "ITL": [g for r in done for g in r["itl"]]}
    for name, values in series.items():
        if values:
            x = np.sort(np.asarray(values) * 1000)
            axes[0].step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=name)
    axes[0].set(xscale="log", xlabel="ms", ylabel="fraction of requests (ITL: of gaps)", title="Latency CDFs")
    axes[0].legend()
    tl = result["timeline"]
    axes[1].plot(tl["output_chunks_per_s"])
    axes[1].set(xlabel="s since start", ylabel="chunks/s (= tokens/s when streamed 1 per chunk)",
                title="Output throughput over time")
    axes[2].plot(tl["in_flight"])
    axes[2].set(xlabel="s since start", ylabel="requests", title="Requests active during each second")
    fig.suptitle(result["config"]["label"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(results: list[dict], path: Path, percentile: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tput = [r["summary"]["output_throughput"] for r in results]
    for ax, key, title in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "tpot_ms", "TPOT")):
        for stat in ("median", percentile):
            ax.plot(tput, [r["summary"][key][stat] for r in results], marker="o", label=f"{title} {stat}")
        for r, x in zip(results, tput):
            ax.annotate(r["config"]["point"], (x, r["summary"][key]["median"]), fontsize=7)
        ax.set(xlabel="output tokens/s", ylabel="ms", title=f"{title} vs throughput")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
