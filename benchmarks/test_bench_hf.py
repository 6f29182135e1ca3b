"""A Hugging Face causal LM in Taylor mode: derivatives of a GPT-2-small-size model's own loss along shared
directions in embedding space, against nested autograd and one plain forward pass.

Run:  pytest benchmarks/test_bench_hf.py -s -p no:cacheprovider
Case: ``GPT2LMHeadModel`` from a config built in code (12 layers, width 768, 12 heads, vocabulary 50257; nothing
downloaded), one sequence of 128 tokens, float32, eval mode, the model's own loss (``y=None``), K = 15 shared
directions in embedding space, N = 6, ``fused`` and ``taylor``. ``floor`` is one plain forward of the batch, so
the printed ``x_floor`` is the time in forward passes. Nested autograd (``autograd``) at this size takes very
long and much memory: it runs only with ``LAMDA_BENCH_HF_AUTOGRAD=1``, on the CPU under an address-space cap
(``LAMDA_BENCH_HF_AUTOGRAD_LIMIT`` bytes, default 16 GiB): where it does not fit, the size it asked for is printed
and it is not timed. Every variant's peak memory is measured
in a child process (CPU: peak resident set; CUDA: peak allocated) and printed beside the times; a variant that
runs out of memory is reported with the limit it hit. ``directional_derivs`` gets ``memory_budget`` when it
takes one (``LAMDA_BENCH_HF_BUDGET`` bytes, default 6 GB). ``LAMDA_BENCH_TINY=1``: a tiny config (2 layers,
width 32, 16 tokens, K = 2, N = 2) for a smoke run.
"""
from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import resource

import pytest
import torch

import lamda_ext
from lamda_ext import ops
from _bench import peak_rss_bytes

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install lamda_ext[hf])")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TINY = os.environ.get("LAMDA_BENCH_TINY") == "1"
LAYERS, WIDTH, HEADS, VOCAB, TOKENS, K, N = (2, 32, 2, 64, 16, 2, 2) if TINY else (12, 768, 12, 50257, 128, 15, 6)
BUDGET = int(os.environ.get("LAMDA_BENCH_HF_BUDGET", 6 * 2 ** 30))
# address-space cap of the nested-autograd child on the CPU (bytes): past it, the size asked for is reported
AUTOGRAD_AS_LIMIT = int(os.environ.get("LAMDA_BENCH_HF_AUTOGRAD_LIMIT", 16 * 2 ** 30))
VARIANTS = ["floor", "fused", "taylor"] + (["autograd"] if os.environ.get("LAMDA_BENCH_HF_AUTOGRAD") == "1" else [])
CASE = f"gpt2_L{LAYERS}_d{WIDTH}_T{TOKENS}_K{K}_N{N}"


def _setup():
    """The model, its batch (one sequence, labels = input_ids) and K shared unit directions ``[K, T, d]``."""
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, vocab_size=VOCAB, n_positions=TOKENS,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).to(DEVICE).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (1, TOKENS), generator=g).to(DEVICE)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    u = torch.randn(K, TOKENS, WIDTH, generator=g).to(DEVICE)
    return model, batch, u / u.flatten(1).norm(dim=1)[:, None, None]


def _timed_fn(variant: str):
    """``fn()`` running the variant once (no gradient kept), synchronised on CUDA."""
    model, batch, u = _setup()
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    kw = {"memory_budget": BUDGET} if "memory_budget" in inspect.signature(lamda_ext.directional_derivs).parameters \
        else {}

    def fn():
        with torch.no_grad():
            if variant == "floor":
                model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
            else:
                lamda_ext.directional_derivs(model, batch, order=N, directions=u, wrt="inputs_embeds",
                                             backend=variant, **kw)
        sync()
    return fn


def _child(variant: str, queue) -> None:
    try:
        fn = _timed_fn(variant)
        if variant == "autograd" and DEVICE == "cpu":      # fail with the size asked for instead of being killed
            resource.setrlimit(resource.RLIMIT_AS, (AUTOGRAD_AS_LIMIT, AUTOGRAD_AS_LIMIT))
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if DEVICE == "cuda" else peak_rss_bytes()
        fn()
        queue.put(("ok", (torch.cuda.max_memory_allocated() if DEVICE == "cuda" else peak_rss_bytes(), before)))
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        if variant == "autograd" and DEVICE == "cpu":      # the queue's feeder thread needs address space
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        queue.put(("out of memory", (str(err).splitlines() or [type(err).__name__])[0][:300]))


def _peak_memory(variant: str) -> str:
    """The variant's peak memory, from one run in a fresh child process (so earlier variants do not count)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(variant, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or queue.empty():
        return f"child exited with code {proc.exitcode} (killed for memory?)"
    status, value = queue.get()
    if status != "ok":
        return f"{status}: {value}"
    what = "allocated" if DEVICE == "cuda" else "RSS"
    return f"{value[0] / 2 ** 30:.2f} GiB peak {what} ({value[1] / 2 ** 30:.2f} GiB before the call: model, imports)"


@pytest.mark.parametrize("variant", VARIANTS)
def test_gpt2_small_own_loss_directional_derivs(record, variant):
    if variant == "fused" and not ops.available():
        pytest.skip("extension lamda_ext._C not built")
    mem = _peak_memory(variant)
    print(f"\n{CASE} {variant}: {mem}")
    if not mem[0].isdigit():
        pytest.skip(f"{variant} does not fit: {mem}")
    fn = _timed_fn(variant)
    record(CASE, variant, fn, rounds=1 if TINY or variant == "autograd" else 3, warmup=0 if TINY else 1)
