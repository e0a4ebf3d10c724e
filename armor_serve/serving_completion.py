"""POST /v1/completions: one or more text prompts (optionally echoed) -> text choices."""
from __future__ import annotations

from fastapi import Request

from armor_serve.api_errors import ApiError
from armor_serve.protocol import CompletionRequest
from armor_serve.serving import OpenAIServing, Reply


class OpenAIServingCompletion(OpenAIServing):
    id_prefix, object_name, chunk_object = "cmpl", "text_completion", "text_completion"
    logprob_lists = ("tokens", "token_logprobs", "top_logprobs")

    async def create(self, req: CompletionRequest, request: Request):
        self.check_request(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        if req.echo and req.logprobs is not None:
            raise ApiError(400, "echo together with logprobs (prompt logprobs) is not supported", param="echo")
        ids = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        if any(not p for p in ids):
            raise ApiError(400, "prompt must not be empty", param="prompt")
        sampling = self.sampling_for(req, max(len(p) for p in ids), req.max_tokens or 16, req.logprobs)
        reply = Reply(ids, sampling.n, req.logprobs or 0, echo=prompts if req.echo else None)
        return await self.respond(request, req, reply, sampling)

    def logprobs(self, chunk, top: int) -> dict | None:
        if chunk.logprobs is None:
            return None
        decode = lambda t: self.tokenizer.decode([t])
        return {"tokens": [decode(t) for t, _, _ in chunk.logprobs],
                "token_logprobs": [lp for _, lp, _ in chunk.logprobs],
                "top_logprobs": [{decode(t): v for t, v in sorted(alts.items(), key=lambda kv: -kv[1])[:top]}
                                 for _, _, alts in chunk.logprobs],
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
