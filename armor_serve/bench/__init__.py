"""`armor bench serve`: a streaming load tester for any OpenAI-compatible endpoint.

prompts (what to send) -> client (one streamed request, timed) -> runner (arrivals, concurrency, sweep)
-> metrics (vLLM `vllm bench serve` definitions) -> report (console table, JSON, PNG).
"""
