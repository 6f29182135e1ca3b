"""λ of a causal language model's own loss along 15 shared directions in embedding space, and the top-5
Hessian eigenvalues of its last block's parameters.

    python examples/hf_lambda.py                  # a tiny GPT-2 built from a config in code (nothing downloaded)
    python examples/hf_lambda.py --model gpt2     # a checkpoint you have, loaded with from_pretrained

The batch is the model's own: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding); ``y=None``
makes every call use the model's loss per sample (the mean cross-entropy over each sequence's next tokens).
Needs ``transformers`` (``pip install lamda_ext[hf]``).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import lamda_ext

TEXTS = ["The curvature of a loss landscape tells how fast the loss changes.",
         "Flat minima generalise better, or so the story goes."]


def tiny_model(seed: int = 0):
    """A 2-layer GPT-2 of width 32 over a 64-token vocabulary, built in code (float64)."""
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).double().eval(), None


def load(name: str | None, seed: int = 0):
    """``(model, tokenizer)``: the checkpoint ``name`` (``from_pretrained``) or the tiny model (no tokenizer)."""
    if not name:
        return tiny_model(seed)
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(name).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def make_batch(model, tokenizer, seed: int = 0) -> dict:
    """Two sequences, the second padded, with labels = input_ids and -100 on the padding."""
    if tokenizer is not None:
        batch = dict(tokenizer(TEXTS, return_tensors="pt", padding=True))
    else:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, model.config.vocab_size, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        batch = dict(input_ids=ids, attention_mask=mask)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def last_block(model: nn.Module) -> nn.Module:
    """The last transformer block: the last entry of the model's list of ``num_hidden_layers`` blocks."""
    layers = model.config.num_hidden_layers
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == layers:
            return mod[-1]
    raise ValueError(f"no list of {layers} blocks found in {type(model).__name__}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a Hugging Face checkpoint to load (default: a tiny GPT-2 in code)")
    p.add_argument("--directions", type=int, default=15, help="shared directions in embedding space")
    p.add_argument("--order", type=int, default=6, help="highest derivative order")
    p.add_argument("--eigs", type=int, default=5, help="top Hessian eigenvalues of the last block")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    model, tokenizer = load(args.model, args.seed)
    batch = make_batch(model, tokenizer, args.seed)
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(args.seed)
    t, d = batch["input_ids"].shape[1], model.get_input_embeddings().embedding_dim
    u = torch.randn(args.directions, t, d, generator=g, dtype=dtype)
    u = u / u.flatten(1).norm(dim=1)[:, None, None]               # K shared unit directions [K, T, d]
    derivs = lamda_ext.directional_derivs(model, batch, order=args.order, directions=u, wrt="inputs_embeds")
    lam = lamda_ext.curvature_rate(derivs.detach())                 # [B, K]
    block = last_block(model)
    eig = lamda_ext.hessian_eigs(model, data=batch, k=args.eigs, params=block,
                                 generator=torch.Generator().manual_seed(args.seed))
    print(f"model: {args.model or 'tiny GPT-2 (config in code)'}, batch {tuple(batch['input_ids'].shape)}, "
          f"K={args.directions}, N={args.order}")
    for b in range(lam.shape[0]):
        print(f"  sequence {b}: λ mean {lam[b].mean():.4f}, min {lam[b].min():.4f}, max {lam[b].max():.4f}")
    print(f"top-{args.eigs} Hessian eigenvalues of the last block ({sum(q.numel() for q in block.parameters())} "
          f"parameters): " + ", ".join(f"{v:.6g}" for v in eig.eigenvalues.tolist()))
    return {"derivs": derivs.detach(), "lambda": lam, "eigs": eig}


if __name__ == "__main__":
    main()
