"""`armor compress`: arguments and entry point."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from compress.pipeline import CALIB_DTYPES, METHODS, PROXIES, Settings, compress_checkpoint


def add_compress_arguments(parser) -> None:
    d = Settings()
    parser.add_argument("--model", required=True, help="local dense Hugging Face checkpoint directory")
    parser.add_argument("--out", required=True, help="output checkpoint directory (resumes a killed run)")
    parser.add_argument("--method", default=d.method, choices=METHODS)
    parser.add_argument("--block-size", type=int, default=d.block_size, help="ARMOR block size b (16/32/64/128)")
    parser.add_argument("--proxy", default=d.proxy, choices=PROXIES,
                        help="ARMOR's layer loss: 'hessian' weighs errors by the full calibration Gram matrix and "
                             "starts from SparseGPT; 'diag' is the paper's NoWag proxy (its diagonal), from NoWag-P")
    parser.add_argument("--hessian-damp", type=float, default=d.hessian_damp,
                        help="ridge added to the full-Gram proxy, as a fraction of mean(diag H)")
    parser.add_argument("--iters", type=int, default=d.iters, help="ARMOR BCD iterations per matrix (paper: 3000)")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate of the continuous step")
    parser.add_argument("--patience", type=int, default=d.patience, help="stop after N iterations without improvement")
    parser.add_argument("--discrete-steps", type=int, default=d.discrete_steps,
                        help="ARMOR sparse-core (mask) updates per iteration; each costs a fraction of an iteration")
    parser.add_argument("--scale-value-lr", action=argparse.BooleanOptionalAction, default=d.scale_value_lr,
                        help="scale the kept values' Adam lr by sqrt(576 / d_in), so wide matrices do not overshoot")
    parser.add_argument("--bcd-holdout", type=int, default=d.bcd_holdout,
                        help="ARMOR with --proxy hessian: calibration samples held out of the fit; each matrix keeps "
                             "the BCD state with the lowest loss on them (0: off, keep the lowest fitted loss)")
    parser.add_argument("--tune-epochs", type=int, default=d.tune_epochs,
                        help="epochs of block-wise tuning: each decoder layer's ARMOR factors fitted jointly to the "
                             "dense layer's output (0: off)")
    parser.add_argument("--tune-lr", type=float, default=d.tune_lr, help="Adam learning rate of the block-wise tuning")
    parser.add_argument("--tune-micro-batch", type=int, default=d.tune_micro_batch,
                        help="calibration samples per Adam step of the block-wise tuning")
    parser.add_argument("--input-correction", type=float, default=d.input_correction,
                        help="fit each matrix to the dense model's output on the dense model's inputs, correcting the "
                             "error the already compressed layers pass on (ARMOR with --proxy hessian)")
    parser.add_argument("--mlp-row-weights", action=argparse.BooleanOptionalAction, default=d.mlp_row_weights,
                        help="ARMOR with --proxy hessian: weigh gate_proj's and up_proj's output rows by how far each "
                             "moves the MLP's output (the default), or alike (--no-mlp-row-weights)")
    parser.add_argument("--residual-row-weights", action=argparse.BooleanOptionalAction,
                        default=d.residual_row_weights,
                        help="ARMOR: weigh o_proj's and down_proj's output rows (and the block-wise tuning's output "
                             "channels) by how much the later layers' RMSNorms read each residual channel, "
                             "instead of alike")
    parser.add_argument("--calib-samples", type=int, default=d.calib_samples, help="calibration sequences")
    parser.add_argument("--calib-generated", type=float, default=d.calib_generated,
                        help="share of the calibration samples the dense model writes itself (sampled after short "
                             "Wikipedia prefixes), the rest Wikipedia text; 0: Wikipedia only")
    parser.add_argument("--calib-generated-len", type=int, default=d.calib_generated_len,
                        help="tokens per generated text; each calibration sample packs several end to end "
                             "(0: one text per sample, --seq-len tokens)")
    parser.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per calibration sequence")
    parser.add_argument("--calib-dtype", default=d.calib_dtype, choices=CALIB_DTYPES,
                        help="dtype of the matmuls in the layers' calibration forwards and the block-wise tuning "
                             "(Gram matrices keep float32/float64 sums); auto: bfloat16 where the CPU multiplies it "
                             "natively (AVX512-BF16/AMX), else float32")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="calibration sequences per forward")
    parser.add_argument("--distill-epochs", type=int, default=None,
                        help="epochs of end-to-end distillation after the last layer: every compressed matrix tuned "
                             "at once towards the dense model's next-token distribution on the calibration samples, "
                             "kept only where it lowers the KL on held-out ones (default: 1 for ARMOR, 0 for the "
                             "baselines, which take it when asked; 0: off)")
    parser.add_argument("--distill-lr", type=float, default=d.distill_lr, help="Adam learning rate of the distillation")
    parser.add_argument("--overwrite", action="store_true", help="discard what --out holds and start again")


def settings_from(args) -> Settings:
    """The Settings the parsed `armor compress` arguments ask for (method-dependent defaults resolved)."""
    return Settings(method=args.method, block_size=args.block_size, proxy=args.proxy,
                    hessian_damp=args.hessian_damp, iters=args.iters, lr=args.lr, patience=args.patience,
                    discrete_steps=args.discrete_steps, bcd_holdout=args.bcd_holdout,
                    scale_value_lr=args.scale_value_lr, tune_epochs=args.tune_epochs, tune_lr=args.tune_lr,
                    tune_micro_batch=args.tune_micro_batch,
                    input_correction=args.input_correction, mlp_row_weights=args.mlp_row_weights,
                    residual_row_weights=args.residual_row_weights,
                    calib_samples=args.calib_samples, calib_generated=args.calib_generated,
                    calib_generated_len=args.calib_generated_len,
                    seq_len=args.seq_len, calib_dtype=args.calib_dtype,
                    seed=args.seed, batch_size=args.batch_size, distill_epochs=args.distill_epochs,
                    distill_lr=args.distill_lr)


def run_compress(args) -> None:
    from compress.model_import import require_checkpoint

    summary = compress_checkpoint(require_checkpoint(args.model), Path(args.out), settings_from(args),
                                  overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
