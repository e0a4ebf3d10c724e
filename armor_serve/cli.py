"""The `armor` command line: one entry point, one subcommand per job."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from compress.errors import UserError


def _write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
    except OSError as err:
        raise UserError(f"cannot write '{out}' ({err.strerror}); pass a writable --json path") from None


def cmd_model_import(args) -> None:
    from compress import model_import

    gguf = Path(args.gguf) if args.gguf else model_import.bundled_gguf(args.name or "smollm2")
    out = model_import.import_gguf(gguf, Path(args.out) if args.out else None, force=args.force)
    print(out)


def cmd_eval(args) -> None:
    from compress import evaluation
    from compress.model_import import require_checkpoint

    tasks = evaluation.parse_tasks(args.tasks)
    model_dir = require_checkpoint(args.model)
    if args.json:  # fail on an unwritable output before the long evaluation, not after
        _write_json(args.json, {"status": "running"})
    report = evaluation.evaluate(model_dir, tasks, limit=args.limit, ctx_len=args.ctx_len, stride=args.stride,
                                 batch_size=args.batch_size, dtype=args.dtype)
    report["command"] = " ".join(["armor"] + sys.argv[1:])
    _write_json(args.json, report)
    print(evaluation.format_table(report))


def cmd_compress(args) -> None:
    from compress.cli import run_compress

    run_compress(args)


def cmd_serve(args) -> None:
    from armor_serve.server import serve

    serve(args)


def cmd_bench_serve(args) -> None:
    from armor_serve.bench.runner import bench_serve

    bench_serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armor", description="Compress LLMs with ARMOR 2:4 sparsity and serve them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="manage local models").add_subparsers(dest="model_command", required=True)
    imp = model.add_parser("import", help="convert a GGUF (bundled or --gguf FILE) into a Hugging Face checkpoint")
    imp.add_argument("name", nargs="?", help="bundled model name (default: smollm2)")
    imp.add_argument("--gguf", help="path of any llama/qwen2/qwen3 GGUF file")
    imp.add_argument("--out", help="output directory (default: the armor-serve cache)")
    imp.add_argument("--force", action="store_true", help="re-import even when a cached copy exists")
    imp.set_defaults(func=cmd_model_import)

    ev = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a checkpoint")
    ev.add_argument("--model", required=True, help="local checkpoint directory")
    ev.add_argument("--tasks", default="wiki_ppl", help="comma-separated: all, wiki_ppl, lambada_ppl, hellaswag, "
                    "piqa, arc_easy, arc_challenge, boolq, winogrande, openbookqa")
    ev.add_argument("--limit", type=int, help="at most N examples per task (N windows for wiki_ppl)")
    ev.add_argument("--ctx-len", type=int, default=2048, help="perplexity window length in tokens")
    ev.add_argument("--stride", type=int, help="perplexity window stride (default: ctx-len, no overlap)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.add_argument("--json", help="write the full report here")
    ev.set_defaults(func=cmd_eval)

    from compress.cli import add_compress_arguments

    comp = sub.add_parser("compress", help="2:4-compress a checkpoint with ARMOR or a baseline")
    add_compress_arguments(comp)
    comp.set_defaults(func=cmd_compress)

    from armor_serve.server import add_serve_arguments

    srv = sub.add_parser("serve", help="OpenAI-compatible server (chat + completions) with Prometheus metrics")
    add_serve_arguments(srv)
    srv.set_defaults(func=cmd_serve)

    from armor_serve.bench.runner import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    load = bench.add_parser("serve", help="load-test an OpenAI-compatible server (streams every request; "
                            "metrics as `vllm bench serve` defines them)")
    add_bench_arguments(load)
    load.set_defaults(func=cmd_bench_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except UserError as err:
        print(f"armor: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("armor: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
