"""The `leakage` command line. `main(argv)` is callable from tests; every subcommand prints, the library never does."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    """Build the toy model, render a 2-block trace, show spans and mask, check HF == bridge == nnsight."""
    import torch

    from leakage import MementoTrace, additive_mask, build_model, format_mask, memento_mask, parse_spans
    from leakage.views import to_bridge, to_nnsight

    model, tokenizer = build_model(args.preset, seed=args.seed)
    trace = MementoTrace(prompt="sum", blocks=[("1 2", "3"), ("4", "7")], answer="7")
    ids = trace.to_ids(tokenizer)
    spans = parse_spans(ids, tokenizer)
    print(f"model: preset {args.preset!r}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"vocab {len(tokenizer)}")
    print(f"trace text: {trace.to_text()}")
    print(f"token ids:  {ids}")
    for block in spans.blocks:
        print(f"block {block.index}: <|block_start|> at {block.block_start}, <|block_end|> at {block.block_end}, "
              f"summary {block.summary_start}..{block.summary_end}")
    mask = memento_mask(ids, tokenizer, keep_last_n_blocks=args.keep_last_n_blocks,
                        mask_delimiters=args.mask_delimiters)
    print(f"\nmemento mask (keep_last_n_blocks={args.keep_last_n_blocks}, mask_delimiters={args.mask_delimiters}):")
    print(format_mask(mask, spans))

    batch = torch.tensor([ids])
    attention = additive_mask(mask)
    with torch.no_grad():
        hf_logits = model(batch, attention_mask=attention).logits
        causal_logits = model(batch).logits
        bridge_logits = to_bridge(model)(batch, attention_mask=attention)
        view = to_nnsight(model)
        with view.trace(batch, attention_mask=attention):
            nnsight_logits = view.output.logits.save()
    print("\nmax |logit difference| with the memento mask:")
    print(f"  HF vs TransformerLens bridge: {(hf_logits - bridge_logits).abs().max().item():.2e}")
    print(f"  HF vs nnsight:                {(hf_logits - nnsight_logits).abs().max().item():.2e}")
    print(f"  masked vs plain causal (must differ after block 0's memento): "
          f"{(hf_logits - causal_logits).abs().max().item():.2e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leakage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="end-to-end check of trace format, memento mask and the three model views")
    demo.add_argument("--preset", default="tiny", help="model preset (tiny, small)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--keep-last-n-blocks", type=int, default=0)
    demo.add_argument("--mask-delimiters", action="store_true")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
