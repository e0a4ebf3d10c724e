"""POST /v1/chat/completions: messages -> the model's chat template -> one prompt -> chat choices."""
from __future__ import annotations

from fastapi import Request

from armor_serve.api_errors import ApiError
from armor_serve.protocol import ChatCompletionRequest
from armor_serve.serving import OpenAIServing, Reply


class OpenAIServingChat(OpenAIServing):
    id_prefix, object_name, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"
    logprob_lists = ("content",)

    async def create(self, req: ChatCompletionRequest, request: Request):
        self.check_request(req, req.top_logprobs if req.logprobs else None)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        top = req.top_logprobs or 0
        sampling = self.sampling_for(req, len(ids), req.max_completion_tokens or req.max_tokens,
                                     top if req.logprobs else None)
        return await self.respond(request, req, Reply([ids], sampling.n, top), sampling)

    def logprobs(self, chunk, top: int) -> dict | None:
        if chunk.logprobs is None:
            return None
        decode = lambda t: self.tokenizer.decode([t])
        content = []
        for tok, lp, alts in chunk.logprobs:
            best = sorted(alts.items(), key=lambda kv: -kv[1])[:top]
            content.append({"token": decode(tok), "logprob": lp, "bytes": list(decode(tok).encode()),
                            "top_logprobs": [{"token": decode(t), "logprob": v, "bytes": list(decode(t).encode())}
                                             for t, v in best]})
        return {"content": content}

    def opening_choices(self, reply: Reply) -> list[dict]:
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for i in range(len(reply.prompts) * reply.n)]

    def stream_choice(self, index: int, chunk, logprobs: dict | None) -> dict:
        delta = {"content": chunk.text} if chunk.text or not chunk.finish_reason else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": chunk.finish_reason}

    def final_choice(self, index: int, text: str, logprobs: dict | None, finish: str, reply: Reply) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish}
