"""Quality table: dense vs magnitude / Wanda / SparseGPT / NoWag-P / ARMOR on the bundled model.

    python -m benchmarks.quality            # writes benchmarks/results/quality.{json,md,png}
    python -m benchmarks.quality --model DIR --work .cache/quality-NAME --name quality-NAME   # another model
    python -m benchmarks.quality --only dense,sparsegpt,armor-b32 --ppl-only   # compression time + wiki ppl only
    python -m benchmarks.quality --model DIR --name quality-NAME --only armor-b32-lr --merge   # add a row to a table
    python -m benchmarks.quality --model QWEN --name quality-NAME --limit 400 --dtype bfloat16   # a 1.5B model's rows

Each configuration is compressed with `armor compress` and evaluated with `armor eval` (both through the
CLI, exactly as a user runs them); results are cached under .cache/quality (each compressed layer, each task's
report) so an interrupted run resumes.
The limits are written into the output. On a 2-core CPU each configuration's 7 tasks at 500 examples take
about 10 minutes to evaluate, so every row takes 2-3 hours; `--only dense,sparsegpt,armor-b32,wanda` 46 minutes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASKS = "wiki_ppl,lambada_ppl,hellaswag,piqa,arc_easy,arc_challenge,boolq,winogrande,openbookqa"
MC_TASKS = ["hellaswag", "piqa", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa"]


def configs(blocks: list[int]) -> list[tuple[str, list[str]]]:
    """Most informative first (an interrupted run still compares ARMOR with its start and the baselines)."""
    armor = [(f"armor-b{b}", ["--method", "armor", "--block-size", str(b)]) for b in blocks]
    paper_proxy = ("armor-diag-b32", ["--method", "armor", "--proxy", "diag", "--block-size", "32"])
    b32 = ["--method", "armor", "--block-size", "32"]
    # the generated quarter as one 512-token text per sample, as before 2026-12-06 (evening; 256-token texts since)
    gen512 = ["--calib-generated-len", "0"]
    # the defaults before 2026-12-06 (32 samples, 100 iterations, no tuning, no generated text, gate/up rows alike),
    # pinned for the rows recorded with them; a config's own flags come later and win
    before = [*b32, "--calib-samples", "32", "--iters", "100", "--tune-epochs", "0", "--tune-lr", "1e-4",
              "--calib-generated", "0", "--no-mlp-row-weights", "--distill-epochs", "0"]
    # the layer-wise default of 2026-12-06 (2 tuning epochs at 2e-4, no distillation), pinned the same way
    evening = ["--tune-epochs", "2", "--tune-lr", "2e-4", "--distill-epochs", "0"]
    c32 = [*before, "--calib-samples", "32"]
    # Block-wise tuning on 64 samples with bfloat16 calibration matmuls (2026-12-04): 75% of the wiki gap in ~11.5
    # minutes, but worse LAMBADA and zero-shot than the default; SparseGPT on the same 64 samples; docs/algorithm.md
    c64_tuned = [*before, "--calib-samples", "64", "--iters", "40", "--tune-epochs", "2"]
    # SparseGPT on 32 and on 64 samples of Wikipedia alone (the "sparsegpt" config: today's defaults, as ARMOR's)
    tuned64 = [("sparsegpt-c32", ["--method", "sparsegpt", "--calib-samples", "32", "--calib-generated", "0"]),
               ("sparsegpt-c64", ["--method", "sparsegpt", "--calib-samples", "64", "--calib-generated", "0"]),
               ("armor-b32-c64-i40-tuned-ic", c64_tuned),
               # a quarter of the calibration samples written by the dense model itself (2026-12-04): keeps the
               # zero-shot accuracy the Wikipedia-only tuning loses (today's default with gate/up rows alike)
               ("armor-b32-c64-i40-tuned-gen25", [*c64_tuned, "--calib-generated", "0.25", *gen512]),
               # the default before 2026-12-06
               ("armor-b32-c32-i100", before),
               # the first default of 2026-12-06: block-wise tuning at Adam lr 1e-4 (2e-4 since the same day)
               ("armor-b32-tune-lr1e-4", [*b32, *evening, "--tune-lr", "1e-4", *gen512]),
               # the default of 2026-12-06 afternoon, and SparseGPT on its calibration samples
               ("armor-b32-gen512", [*b32, *evening, *gen512]),
               ("sparsegpt-gen512", ["--method", "sparsegpt", *gen512]),
               # what would buy the 10 minutes (2026-12-06, quality-tuning-time.md): fewer BCD iterations, one epoch
               ("armor-b32-i20", [*b32, *evening, "--iters", "20", *gen512]),
               ("armor-b32-t1-lr3e-4", [*b32, *evening, "--tune-epochs", "1", "--tune-lr", "3e-4", *gen512]),
               ("armor-b32-t1-mb1", [*b32, *evening, "--tune-epochs", "1", "--tune-micro-batch", "1", *gen512]),
               ("armor-b32-t1-lr3e-4-i60", [*b32, *evening, "--tune-epochs", "1", "--tune-lr", "3e-4", "--iters", "60",
                                            *gen512]),
               # the layer-wise default of 2026-12-06 evening; it with the end-to-end distillation, and with 20 BCD
               # iterations too; SparseGPT (today's calibration) given the same distillation (docs/algorithm.md)
               ("armor-b32-layerwise", [*b32, *evening]),
               ("armor-b32-t2-distill", [*b32, *evening, "--distill-epochs", "1"]),
               ("armor-b32-t2-i20-distill", [*b32, *evening, "--iters", "20", "--distill-epochs", "1"]),
               ("sparsegpt-distill", ["--method", "sparsegpt", "--distill-epochs", "1"]),
               # today's default with 20 BCD iterations: what a 1.5B model's layer-wise pass affords in a session
               ("armor-b32-i20-default", [*b32, "--iters", "20"]),
               # the values' lr scaled to the matrix width (Qwen's 8960-wide down_proj, 2026-12-05)
               ("armor-b32-lr", [*before, "--scale-value-lr"]),
               # and gate/up rows weighed by their share of the MLP output (Qwen's hybrids: ARMOR's MLPs hurt there)
               ("armor-b32-mlp-rows-lr", [*before, "--mlp-row-weights", "--scale-value-lr"])]
    # the input correction's runs (2026-12-03, 32 samples): without it, and with 40 iterations + tuning, the latter
    # also on 4x the calibration text
    no_correction = [*c32, "--input-correction", "0"]
    parts = [("armor-b32-i100", [*no_correction, "--iters", "100", "--tune-epochs", "0"]),
             ("armor-b32-i40-tuned-ic", [*c32, "--iters", "40", "--tune-epochs", "2"]),
             ("armor-b32-c128-i40-tuned-ic", [*before, "--iters", "40", "--calib-samples", "128", "--tune-epochs", "2"])]
    # block-wise tuning without the input correction: after 100 iterations, after 40, and on 4x the calibration
    # text (the tuning, not BCD, is what more text helps)
    tuned = [("armor-b32-tuned", [*no_correction, "--iters", "100", "--tune-epochs", "2"]),
             ("armor-b32-i40-tuned", [*no_correction, "--iters", "40", "--tune-epochs", "2"]),
             ("armor-b32-c128-tuned", [*no_correction, "--iters", "100", "--calib-samples", "128", "--tune-epochs", "2"])]
    # fewer full iterations, more sparse-core steps each: 18% less BCD, 2 points more perplexity (not adopted;
    # docs/algorithm.md, "Where compression time goes")
    budget = [("armor-b32-i60-d2", [*no_correction, "--iters", "60", "--discrete-steps", "2", "--tune-epochs", "0"])]
    return [("dense", []), ("sparsegpt", ["--method", "sparsegpt"]), *armor[1:2], ("nowag-p", ["--method", "nowag-p"]),
            paper_proxy, ("wanda", ["--method", "wanda"]), ("magnitude", ["--method", "magnitude"]), *armor[:1],
            *armor[2:], *tuned64, *parts, *tuned, *budget]


def armor(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI; its progress goes to our stderr live, and its stderr is also kept for the error it ends with."""
    cmd = [sys.executable, "-m", "armor_serve", *args]
    print("+ armor", " ".join(args), flush=True)
    # stdout goes to a file so a chatty stdout can never fill a pipe while we read stderr
    with tempfile.TemporaryFile("w+") as stdout, subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=stdout,
                                                                   stderr=subprocess.PIPE) as proc:
        err = []
        for chunk in iter(lambda: proc.stderr.read(256), ""):
            sys.stderr.write(chunk)
            err.append(chunk)
        proc.wait()
        stdout.seek(0)
        out = stdout.read()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "".join(err))


def cli_error(result: subprocess.CompletedProcess) -> str:
    """The `armor: error: ...` line the CLI ends a refused run with, else a pointer to the log."""
    said = [line for line in result.stderr.splitlines() if line.startswith("armor: error:")]
    return said[-1].removeprefix("armor: ") if said else f"exit status {result.returncode} (see the log)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="dense checkpoint (default: the imported bundled SmolLM2)")
    p.add_argument("--blocks", default="16,32,64,128", help="ARMOR block sizes; the 2nd runs first")
    p.add_argument("--iters", type=int, help="ARMOR iterations (default: armor compress's)")
    p.add_argument("--calib-samples", type=int, help="calibration sequences for every method (default: armor compress's)")
    p.add_argument("--seq-len", type=int, help="tokens per calibration sequence (default: armor compress's)")
    p.add_argument("--ppl-windows", type=int, default=8, help="wiki_ppl windows of 2048 tokens")
    p.add_argument("--limit", type=int, default=500,
                   help="examples per zero-shot task and LAMBADA (500: the mean accuracy's standard error < 1 point)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="armor eval's dtype (bfloat16: ~2x faster where the CPU multiplies bfloat16 natively)")
    p.add_argument("--work", default=str(ROOT / ".cache" / "quality"))
    p.add_argument("--only", help="comma-separated config names to run")
    p.add_argument("--ppl-only", action="store_true", help="compress and wiki perplexity only (no zero-shot pass)")
    p.add_argument("--name", default="quality",
                   help="results file stem (a second model's table beside SmolLM2's: quality-qwen2.5-coder-1.5b)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of the existing results/NAME.json this run does not redo (each keeps its command)")
    args = p.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or armor("model", "import", "smollm2").stdout.strip().splitlines()[-1]
    common = ["--calib-samples", str(args.calib_samples)] if args.calib_samples else []
    common += ["--seq-len", str(args.seq_len)] if args.seq_len else []
    common += ["--iters", str(args.iters)] if args.iters else []
    wanted = set(args.only.split(",")) if args.only else None
    chosen = [(n, a) for n, a in configs([int(b) for b in args.blocks.split(",")]) if not wanted or n in wanted]
    rows = {name: {"config": name} for name, _ in chosen}
    if args.merge:
        rows = merge_rows(RESULTS / f"{args.name}.json", rows)
    # a report is reused only for the dtype it was made in (float32's keep their old names)
    cached = "" if args.dtype == "float32" else f".{args.dtype}"
    # pass 1: compress and wiki perplexity for every configuration; pass 2: LAMBADA and the zero-shot tasks
    for name, method_args in chosen:
        row, ckpt = rows[name], Path(model)
        if method_args:
            ckpt = work / name
            done = armor("compress", "--model", model, "--out", str(ckpt), *common, *method_args)  # a config overrides
            if done.returncode != 0:
                row["error"] = f"compress failed: {cli_error(done)}"
                continue
            summary = json.loads((ckpt / "compression_summary.json").read_text())
            row.update(compress_seconds=summary["seconds"], phase_seconds=summary.get("phase_seconds", {}),
                       peak_rss_bytes=summary.get("peak_rss_bytes", {}),
                       overhead_pct=summary["overhead_pct_of_dense"],
                       checkpoint_bytes=summary["checkpoint_bytes"], mean_proxy_loss=summary["mean_proxy_loss"])
        row["checkpoint"] = str(ckpt)
        evaluate(row, work / f"{name}{cached}.ppl.json",
                 ["--tasks", "wiki_ppl", "--limit", str(args.ppl_windows), "--dtype", args.dtype])
        write(list(rows.values()), args)
    for row in (rows[name] for name, _ in chosen):  # not the rows kept by --merge
        if "checkpoint" in row and "error" not in row and not args.ppl_only:
            evaluate_tasks(row, work, cached, args, lambda: write(list(rows.values()), args))


def merge_rows(path: Path, redo: dict[str, dict]) -> dict[str, dict]:
    """The rows of an earlier table, in its order, each tagged with the run that made it; `redo`'s rows replace
    theirs (and come after them if new)."""
    if not path.is_file():
        return redo
    earlier = json.loads(path.read_text())
    made_by = {"command": earlier["command"], "date": earlier["date"]}
    rows = {r["config"]: {"run": made_by, **r} for r in earlier["rows"]}
    rows.update(redo)
    return rows


def evaluate_tasks(row: dict, work: Path, cached: str, args, written) -> None:
    """LAMBADA and the zero-shot tasks, one `armor eval` (and one report) per task, so that a run cut short keeps
    the tasks it finished (a larger model's row takes hours); a report of all tasks from before is still read."""
    combined = work / f"{row['config']}{cached}.tasks.json"
    if _done(combined):
        evaluate(row, combined, [])  # finished: only read
        return written()
    for task in TASKS.split(",")[1:]:
        evaluate(row, work / f"{row['config']}{cached}.{task}.json",
                 ["--tasks", task, "--limit", str(args.limit), "--dtype", args.dtype])
        written()
        if "error" in row:
            return


def evaluate(row: dict, path: Path, task_args: list[str]) -> None:
    """Run `armor eval` unless `path` already holds its finished report; merge the results into `row`."""
    if not _done(path) and armor("eval", "--model", row["checkpoint"], *task_args, "--json", str(path)).returncode:
        row["error"] = f"eval failed: {' '.join(task_args)}"
        return
    row.setdefault("results", {}).update(json.loads(path.read_text())["results"])


def _done(path: Path) -> bool:
    """An eval report that finished (armor eval writes a placeholder first)."""
    return path.is_file() and "results" in json.loads(path.read_text())


def write(rows: list[dict], args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "work"}
    from benchmarks.layers import device_name

    payload = {"command": "python -m benchmarks.quality " + " ".join(sys.argv[1:]), "settings": settings,
               "date": time.strftime("%Y-%m-%d"), "machine": device_name("cpu"), "rows": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    head = "| config | wiki ppl | lambada ppl | lambada acc | " + " | ".join(MC_TASKS) + " | mean acc ± SE | compress s | overhead % |"
    tasks = ("no other tasks (--ppl-only)" if args.ppl_only else
             f"other tasks: first {args.limit} examples (fewer where the set is smaller); zero-shot acc (acc_norm for "
             f"hellaswag, arc, openbookqa, piqa as lm-eval reports both) with its standard error in points; the mean's "
             f"SE is sqrt(sum SE_i^2) / 7")
    dtype = getattr(args, "dtype", "float32")  # tables written before --dtype existed: float32
    lines = [f"Command: `{payload['command']}` ({payload['date']}). Evaluated in {dtype}. wiki ppl: {args.ppl_windows} "
             f"windows of 2048 test-split tokens; {tasks}. Machine: {payload['machine']}.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        if "error" in row or "results" not in row:
            lines.append(f"| {row['config']} | {row.get('error', 'not run yet')} |")
            continue
        r = row["results"]
        cell = lambda task, key, fmt: format(r[task][key], fmt) if task in r else "–"
        metric = {t: "acc_norm" if t in ("hellaswag", "arc_easy", "arc_challenge", "openbookqa", "piqa") else "acc"
                  for t in MC_TASKS if t in r}
        accs = [r[t][m] for t, m in metric.items()]
        ses = [r[t].get(f"{m}_stderr", float("nan")) for t, m in metric.items()]
        cells = [cell("wiki_ppl", "perplexity", ".2f"), cell("lambada_ppl", "perplexity", ".1f"), cell("lambada_ppl", "acc", ".3f")]
        if len(accs) == len(MC_TASKS):
            cells += [f"{a:.3f} ±{100 * e:.1f}" for a, e in zip(accs, ses)]
            cells += [f"{sum(accs) / len(accs):.3f} ±{100 * sum(e * e for e in ses) ** 0.5 / len(ses):.1f}"]
        else:
            cells += ["–"] * (len(MC_TASKS) + 1)
        cells += [f"{row.get('compress_seconds', 0):.0f}", f"{row.get('overhead_pct', 0):.1f}"]
        lines.append(f"| {row['config']} | " + " | ".join(cells) + " |")
    lines += gap_closed(rows)
    runs: dict[tuple, list[str]] = {}  # earlier run -> the configs kept from it
    for r in rows:
        if "run" in r:
            runs.setdefault((r["run"]["command"], r["run"]["date"]), []).append(r["config"])
    earlier = [f"* {', '.join(names)}: `{cmd}` ({date})" for (cmd, date), names in runs.items()]
    notes = [f"* {r['config']}: {r['note']}" for r in rows if r.get("note")]
    lines += (["", "Rows kept from earlier runs (--merge):", ""] + earlier if earlier else []) + ([""] + notes if notes else [])
    phased = [r for r in rows if r.get("phase_seconds")]
    if phased:
        names = list(dict.fromkeys(n for r in phased for n in r["phase_seconds"]))  # older runs lack newer phases
        lines += ["", "Compression time per phase (s): " + ", ".join(names), ""]
        lines += [f"* {r['config']}: " + ", ".join(f"{r['phase_seconds'].get(n, 0):.0f}" for n in names) +
                  f" (total {r['compress_seconds']:.0f}){peak_rss(r)}" for r in phased]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, args)


def peak_rss(row: dict) -> str:
    """The compress process's peak resident memory, after the layer-wise pass and with the distillation, and the
    per-layer peaks of the layers after the first (whose own includes loading); runs before 2026-12-07 recorded no
    peaks, and the first ones of that day no per-layer ones."""
    peaks = row.get("peak_rss_bytes") or {}
    out = "".join(f"; peak RSS {stage.replace('_', ' ')} {peaks[stage] / 2**30:.1f} GiB"
                  for stage in ("layer_wise", "with_distillation") if stage in peaks)
    later = [p for p in peaks.get("per_layer", [])[1:] if p]
    if later:
        out += (f"; per-layer peak, layers 2-{len(later) + 1}: {min(later) / 2**30:.1f}-{max(later) / 2**30:.1f} GiB"
                f" (last {later[-1] / 2**30:.1f})")
    return out


def gap_closed(rows: list[dict]) -> list[str]:
    """The issue's target: the share of the (best one-shot baseline -> dense) perplexity gap each ARMOR row closes;
    for an ARMOR row that ran the end-to-end distillation, also the share from the best baseline given it too."""
    out = []
    distilled = {r["config"] for r in rows if r.get("phase_seconds", {}).get("distill", 0) > 0}
    for task in ("wiki_ppl", "lambada_ppl"):
        ppl = {r["config"]: r["results"][task]["perplexity"] for r in rows if task in r.get("results", {})}
        methods = ("magnitude", "wanda", "sparsegpt", "nowag-p")
        baselines = {k: v for k, v in ppl.items()  # each method at any number of calibration samples (-cN)
                     if any(k == m or k.startswith(f"{m}-c") for m in methods)}
        baselines_distilled = {k: v for k, v in ppl.items() if k in distilled and k.startswith(methods)}
        if "dense" not in ppl or not baselines:
            continue
        best = min(baselines, key=baselines.get)
        for name, value in ppl.items():
            if name.startswith("armor"):
                share = (baselines[best] - value) / (baselines[best] - ppl["dense"])
                line = (f"* {task}: {name} closes {100 * share:.0f}% of the gap between the best baseline "
                        f"({best}, {baselines[best]:.2f}) and dense ({ppl['dense']:.2f}): {value:.2f}")
                if name in distilled and baselines_distilled:
                    other = min(baselines_distilled, key=baselines_distilled.get)
                    share = (ppl[other] - value) / (ppl[other] - ppl["dense"])
                    line += f"; {100 * share:.0f}% of the gap from the best baseline distilled too ({other}, {ppl[other]:.2f})"
                out.append(line)
    return [""] + out if out else []


def plot(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and "wiki_ppl" in r.get("results", {})]
    names = [r["config"] for r in ok]
    ppl = [r["results"]["wiki_ppl"]["perplexity"] for r in ok]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, ppl, color=["gray" if n == "dense" else "tab:green" if n.startswith("armor") else "tab:blue" for n in names])
    ax.set_ylabel("wiki perplexity (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"2:4 compression of {Path(args.model).name if args.model else 'SmolLM2-135M-Instruct'}")
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120)


if __name__ == "__main__":
    main()
