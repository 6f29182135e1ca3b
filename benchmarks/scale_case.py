"""One scale measurement in its own process (peak memory is a per-process figure): a real-size model, one
``directional_derivs`` call, its time in warm forward passes and the process's peak memory.

    python benchmarks/scale_case.py --model vit_b_16 --points 1 --directions 15 --order 6 --backend fused

Prints one JSON line: the call's time (first call, and a second, warm one with ``--repeat 2``), the median of
warm ``torch.no_grad()`` forward passes of the same model and batch in the same process, their ratio
("forward passes"), the process's peak RSS (and peak CUDA memory on a GPU), the plan each call used (from the
``lamda_ext`` debug log), a measured plan of the same call (``lamda_ext.plan``: its predicted peak and cost), and
the RSS before the call (model, inputs, warm forward passes). ``--rss-limit GB`` caps the address space so that a reference that
does not fit fails with the size it asked for instead of being killed.

Models: torchvision classifiers by name at 224×224 (``resnet50``, ``vit_b_16``, ``swin_t``, ``convnext_tiny``,
``resnet18`` ...), ``gpt2_small`` (a GPT-2-small-size decoder built from torch modules: 12 pre-LN causal blocks,
width 768, 12 heads, GELU MLP 3072, vocabulary 50257 with tied embeddings, 124 M parameters, 128 tokens;
directions in embedding space, loss: next-token cross-entropy of the last position), and ``vit_2block``.
Classification heads that torchvision zero-initialises get N(0, 0.01) weights (constant logits otherwise).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time

import torch
import torchvision
from torch import nn


class GPT2Small(nn.Module):
    """Token embeddings [B, T, 768] → logits of the last position [B, vocab]: 12 pre-LN causal blocks."""

    def __init__(self, layers=12, dim=768, heads=12, vocab=50257, tokens=128):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(tokens, dim) * 0.01)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, activation="gelu", norm_first=True,
                                           batch_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.wte = nn.Embedding(vocab, dim)

    def forward(self, e):
        t = e.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf"), dtype=e.dtype, device=e.device), 1)
        h = self.blocks(e + self.pos, mask=mask, is_causal=True)
        return self.norm(h[:, -1]) @ self.wte.weight.T


def build(name: str, points: int, device, dtype):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "gpt2_small":
        m = GPT2Small()
        x = torch.randn(points, 128, 768, generator=g) * 0.02
        classes = 50257
    elif name == "vit_2block":
        m = torchvision.models.VisionTransformer(224, 16, 2, 12, 768, 3072)
        x, classes = torch.randn(points, 3, 224, 224, generator=g), 1000
    else:
        m = getattr(torchvision.models, name)()
        x, classes = torch.randn(points, 3, 224, 224, generator=g), 1000
    for mod in m.modules():          # torchvision zero-initialises some classification heads
        if isinstance(mod, nn.Linear) and mod.weight.abs().max() == 0:
            nn.init.normal_(mod.weight, std=0.01)
    m = m.to(device, dtype).eval()
    y = torch.randint(0, classes, (points,), generator=g)
    return m, x.to(device, dtype), y.to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--points", type=int, default=1)
    ap.add_argument("--directions", type=int, default=15)
    ap.add_argument("--order", type=int, default=6)
    ap.add_argument("--backend", default="fused")
    ap.add_argument("--budget", default="auto", help="memory_budget: bytes or 'auto'")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-grad", action="store_true", help="call under torch.no_grad() (default: grad mode on)")
    ap.add_argument("--repeat", type=int, default=1, help="calls to time (the first one plans)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rss-limit", type=float, default=0, help="address-space cap in GB (0: none)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import lamda_ext
    from _bench import peak_rss_bytes
    dev, dtype = torch.device(a.device), getattr(torch, a.dtype)
    m, x, y = build(a.model, a.points, dev, dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fw = []
    with torch.no_grad():
        for i in range(7):
            sync()
            t = time.perf_counter()
            m(x)
            sync()
            if i >= 2:
                fw.append(time.perf_counter() - t)
    u = lamda_ext.random_directions(x, a.directions, torch.Generator(device=dev).manual_seed(1))
    budget = a.budget if a.budget == "auto" else int(float(a.budget))
    before = peak_rss_bytes()
    if a.rss_limit:
        lim = int(a.rss_limit * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        cuda0 = torch.cuda.memory_allocated(dev)
    out = {"model": a.model, "points": a.points, "K": a.directions, "N": a.order, "backend": a.backend,
           "device": str(dev), "dtype": a.dtype, "grad": not a.no_grad, "threads": torch.get_num_threads(),
           "forward_s": statistics.median(fw), "rss_before_GB": before / 2**30,
           "params_M": sum(p.numel() for p in m.parameters()) / 1e6}
    times, plans = [], []

    class _Plans(logging.Handler):      # the plan each call used (lamda_ext logs it at debug level)
        def emit(self, record):
            if record.getMessage().startswith("plan:"):
                plans.append(record.getMessage())

    logger = logging.getLogger("lamda_ext")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_Plans())
    try:
        kw = dict(order=a.order, directions=u, backend=a.backend)
        if a.backend in ("taylor", "fused", "auto"):
            kw["memory_budget"] = budget
        for _ in range(a.repeat):
            sync()
            t = time.perf_counter()
            with torch.set_grad_enabled(not a.no_grad):
                d = lamda_ext.directional_derivs(m, x, y, **kw)
            sync()
            times.append(time.perf_counter() - t)
            del d
        out["call_plans"] = plans
        if a.backend in ("taylor", "fused", "auto"):     # a measured plan of the same call (cost model cached)
            with torch.set_grad_enabled(not a.no_grad):
                p = lamda_ext.plan(m, x, y, **kw)
            out.update(plan=str(p), predicted_peak_GB=p.predicted_peak / 2**30, chunks=p.n_chunks,
                       predicted_forward_passes=p.forward_passes)
        out["ok"] = True
    except (RuntimeError, MemoryError) as err:     # the address-space cap: report what was asked for
        out["ok"] = False
        out["error"] = str(err).splitlines()[0][:300]
    out["call_s"] = times
    out["forward_passes"] = [t / out["forward_s"] for t in times]
    out["peak_rss_GB"] = peak_rss_bytes() / 2**30
    if dev.type == "cuda":
        out["peak_cuda_GB"] = (torch.cuda.max_memory_allocated(dev) - cuda0) / 2**30
    out["K_times_N_plus_1"] = a.directions * (a.order + 1)
    print(json.dumps(out))
    return 0 if out["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
