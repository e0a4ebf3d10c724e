"""POST /v1/completions: one or more prompts (text or token ids, optionally echoed and scored) -> text choices."""
from __future__ import annotations

from fastapi import Request

from armor_serve.api_errors import ApiError
from armor_serve.protocol import CompletionRequest
from armor_serve.serving import OpenAIServing, Reply


class OpenAIServingCompletion(OpenAIServing):
    id_prefix, object_name, chunk_object = "cmpl", "text_completion", "text_completion"
    logprob_lists = ("tokens", "token_logprobs", "top_logprobs")

    async def create(self, req: CompletionRequest, request: Request):
        self.check_request(req, req.logprobs)
        texts, ids = self.prompts(req.prompt)
        # echo + logprobs: the prompt's own tokens are scored too (how lm-eval's local-completions asks for loglikelihoods)
        prompt_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
        sampling = self.sampling_for(req, max(len(p) for p in ids), req.max_tokens or 16, req.logprobs, prompt_logprobs)
        reply = Reply(ids, sampling.n, req.logprobs or 0, echo=texts if req.echo else None)
        return await self.respond(request, req, reply, sampling)

    def prompts(self, prompt) -> tuple[list[str], list[list[int]]]:
        """(text, token ids) of each prompt: text is tokenized as is (no special tokens added); ids are checked
        against the vocabulary and decoded for echo."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        ids = [p if isinstance(p, list) else self.tokenizer(p, add_special_tokens=False).input_ids for p in prompt]
        if not ids or any(not p for p in ids):
            raise ApiError(400, "prompt must not be empty", param="prompt")
        vocab = len(self.tokenizer)
        bad = next((t for p in ids for t in p if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(400, f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        return [p if isinstance(p, str) else self.tokenizer.decode(i) for p, i in zip(prompt, ids)], ids

    def logprobs(self, chunk, top: int) -> dict | None:
        entries = (chunk.prompt_logprobs or []) + (chunk.logprobs or [])
        if not entries:
            return None
        decode = lambda t: self.tokenizer.decode([t])
        return {"tokens": [decode(tok) for tok, _, _ in entries],
                "token_logprobs": [lp for _, lp, _ in entries],
                # the `top` most likely tokens and the chosen one (OpenAI's "as well as the chosen tokens", as
                # vLLM does); the first prompt token has no logprob (nothing precedes it): None there
                "top_logprobs": [None if lp is None else
                                 {decode(t): v for t, v in sorted(alts.items(), key=lambda kv: -kv[1])}
                                 for _, lp, alts in entries],
                "text_offset": []}

    def opening_choices(self, reply: Reply) -> list[dict]:
        return [{"index": k * reply.n + i, "text": text, "logprobs": None, "finish_reason": None}
                for k, text in enumerate(reply.echo or []) for i in range(reply.n)]

    def stream_choice(self, index: int, chunk, logprobs: dict | None) -> dict:
        return {"index": index, "text": chunk.text, "logprobs": logprobs, "finish_reason": chunk.finish_reason}

    def final_choice(self, index: int, text: str, logprobs: dict | None, finish: str, reply: Reply) -> dict:
        if reply.echo:
            text = reply.echo[index // reply.n] + text
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
