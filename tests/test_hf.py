"""Hugging Face models with their own batches and losses: tiny GPT-2 (eager, sdpa), Llama (sdpa: RMSNorm, rotary
embeddings, SwiGLU, grouped-query attention), BERT sequence classification and ViT image classification built from
configs in code (2 layers, width 32, float64, no downloads).

Every derivative is checked against nested autograd of each sample's own loss along ``e_b + t·u`` computed here
from the logits (shift, -100 excluded, mean over counted tokens), with a padded batch and -100 labels.
"""
import importlib.util
import inspect
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._helpers import rel_err, rel_norm
from lamda_ext import HessianOperator, directional_derivs, hessian_eigs, hvp
from lamda_ext.batches import prepare, sample_losses
from lamda_ext.routing import HigherOrderSafe

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install lamda_ext[hf])")
transformers.utils.logging.set_verbosity_error()

TOL = 1e-8
DT = torch.float64
V, B, T, D = 37, 2, 5, 32
SEED = 11
MODELS = ["gpt2-eager", "gpt2-sdpa", "llama", "bert", "vit"]


# ---------------------------------------------------------------------------------------------- models, batches
def _rms_norm_float64(self, h):
    """LlamaRMSNorm in the input's dtype (the model's own casts to float32, which caps agreement at ~1e-7)."""
    return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def gpt2(attn="eager", width=D, inner=None):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=width, n_head=2, n_inner=inner, vocab_size=V, n_positions=16,
                                  bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    return transformers.GPT2LMHeadModel(cfg).to(DT)


def build(name):
    torch.manual_seed(0)
    if name.startswith("gpt2"):
        return gpt2(name.split("-")[1])
    if name == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, num_key_value_heads=2,
                                       intermediate_size=48, vocab_size=V, max_position_embeddings=16,
                                       attention_dropout=0.1, attn_implementation="sdpa", bos_token_id=0,
                                       eos_token_id=0, pad_token_id=0)
        return transformers.LlamaForCausalLM(cfg).to(DT)
    if name == "bert":
        cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=2, intermediate_size=48,
                                      vocab_size=V, max_position_embeddings=16, num_labels=3, pad_token_id=0)
        return transformers.BertForSequenceClassification(cfg).to(DT)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=D, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=48, num_labels=3, hidden_dropout_prob=0.1,
                                 attention_probs_dropout_prob=0.1)
    return transformers.ViTForImageClassification(cfg).to(DT)


def batch_for(name):
    """A batch of B = 2: tokens, the first sequence padded on the left (one position), the second on the right
    (two), -100 labels on the padding and on one more token of the first; ViT: random pixels."""
    g = torch.Generator().manual_seed(2)
    if name == "vit":
        return dict(pixel_values=torch.randn(B, 3, 8, 8, generator=g, dtype=DT), labels=torch.tensor([2, 0]))
    ids = torch.randint(1, V, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[0, 0] = 0
    am[1, 3:] = 0
    if name == "bert":
        return dict(input_ids=ids, attention_mask=am, labels=torch.tensor([1, 2]))
    labels = ids.masked_fill(am == 0, -100)
    labels[0, 2] = -100
    return dict(input_ids=ids, attention_mask=am, labels=labels)


def causal_losses(logits, labels):
    """Each sample's mean cross-entropy over its counted next tokens, computed sample by sample."""
    out = []
    for b in range(labels.shape[0]):
        z, target = logits[b, :-1], labels[b, 1:]
        keep = target != -100
        out.append(-F.log_softmax(z[keep], -1).gather(1, target[keep, None]).mean())
    return torch.stack(out)


def class_losses(logits, labels):
    return -F.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)


def reference(model, batch, slot, U, order):
    """``[B, K, order]``: nested autograd (per sample by a weight vector w) of the per-sample losses at
    ``x + t·u_k``; the padded positions' directions are zeroed here; the RNG is reseeded per direction."""
    kw = {k: v for k, v in batch.items() if k not in ("labels", "input_ids")}
    x0 = model.get_input_embeddings()(batch["input_ids"]).detach() if slot == "inputs_embeds" else kw.pop(slot)
    if "attention_mask" in batch:
        U = U * batch["attention_mask"][None, :, :, None].to(DT)
    if "use_cache" in inspect.signature(model.forward).parameters:
        kw["use_cache"] = False
    per_k = []
    with HigherOrderSafe():
        for k in range(U.shape[0]):
            torch.manual_seed(SEED)
            t = torch.zeros((), dtype=DT, requires_grad=True)
            logits = model(**kw, **{slot: x0 + t * U[k]}).logits
            loss = (causal_losses if logits.dim() == 3 else class_losses)(logits, batch["labels"])
            w = torch.ones_like(loss, requires_grad=True)
            s, ds = (w * loss).sum(), []
            for _ in range(order):
                s, = torch.autograd.grad(s, t, create_graph=True)
                ds.append(torch.autograd.grad(s, w, retain_graph=True)[0])
            per_k.append(torch.stack(ds, -1))
    return torch.stack(per_k, 1).detach()


def _directions(model, batch, slot, k=2):
    g = torch.Generator().manual_seed(4)
    shape = tuple(batch[slot].shape) if slot == "pixel_values" else (B, T, model.config.hidden_size)
    return torch.randn((k,) + shape, generator=g, dtype=DT) / 3


# ---------------------------------------------------------------------------------------------- input space
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", MODELS)
def test_directional_derivs_against_nested_autograd(name, train, monkeypatch):
    """Orders 1–6, taylor and fused, explicit per-point directions, y=None (the model's own loss)."""
    if name == "llama":
        monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward", _rms_norm_float64)
    model, batch = build(name).train(train), batch_for(name)
    slot = "pixel_values" if name == "vit" else "inputs_embeds"
    U = _directions(model, batch, slot)
    ref = reference(model, batch, slot, U, 6)
    assert ref.abs().amax() > 0
    for backend in ("taylor", "fused"):
        torch.manual_seed(SEED)
        got = directional_derivs(model, batch, order=6, directions=U, wrt=slot, backend=backend)
        assert rel_err(got, ref) < TOL, (backend, rel_err(got, ref))


def test_llama_own_float32_rms_norm():
    """The stock LlamaRMSNorm computes in float32: every method then agrees to float32 precision only."""
    model, batch = build("llama").eval(), batch_for("llama")
    U = _directions(model, batch, "inputs_embeds", k=1)
    ref = reference(model, batch, "inputs_embeds", U, 3)
    got = directional_derivs(model, batch, order=3, directions=U, wrt="inputs_embeds", backend="taylor")
    assert rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("name", ["gpt2-sdpa", "llama", "bert", "vit"])
def test_sample_losses_relate_to_the_models_loss(name):
    """Causal LMs: the model's loss is Σ_b n_b ℓ_b / Σ_b n_b (n_b counted tokens); classifiers: the mean of ℓ_b.
    The model computes its causal-LM loss in float32, hence the tolerance there."""
    model, batch = build(name).eval(), batch_for(name)
    per = sample_losses(model, batch)
    with torch.no_grad():
        own = model(**batch).loss.to(DT)
    if name in ("gpt2-sdpa", "llama"):
        n = (batch["labels"][:, 1:] != -100).sum(1).to(DT)
        assert n[0] != n[1]           # the plain mean would differ
        per = per.detach()
        assert abs(float((n * per).sum() / n.sum() - own)) < 1e-6 * float(own)
        assert abs(float(per.mean() - own)) > 1e-3
        assert rel_err(per.detach(), causal_losses(model(**batch).logits, batch["labels"]).detach()) < 1e-14
    else:
        assert abs(float(per.mean() - own)) < 1e-12


def test_padding_shared_directions_and_return_loss():
    """Shared directions [K, T, d] equal the per-point ones expanded, both zero on padding; the loss at t = 0 is
    sample_losses; the embeddings of padded positions do not move."""
    model, batch = build("gpt2-eager").eval(), batch_for("gpt2-eager")
    S = _directions(model, batch, "inputs_embeds")[:, 0]                       # [K, T, d]
    shared, loss0 = directional_derivs(model, batch, order=4, directions=S, wrt="inputs_embeds", backend="taylor",
                                       return_loss=True)
    per = directional_derivs(model, batch, order=4, directions=S.unsqueeze(1).expand(-1, B, -1, -1).clone(),
                             wrt="inputs_embeds", backend="taylor")
    assert rel_err(shared, per) < 1e-12
    assert rel_err(loss0.detach(), sample_losses(model, batch).detach()) < 1e-14
    prob = prepare(model, batch, wrt="inputs_embeds")
    dirs = prob.directions(S)
    assert dirs.shape == (2, B, T, D) and float(dirs[:, 1, 3:].abs().max()) == float(dirs[:, 0, 0].abs().max()) == 0
    drawn = prob.directions(torch.randn(2, B, T, D, dtype=DT), drawn=True)
    assert torch.allclose(drawn.flatten(2).norm(dim=-1), torch.ones(2, B, dtype=DT))


def test_problem_slice_gives_the_rows_of_the_whole():
    model, batch = build("bert").eval(), batch_for("bert")
    for wrt in ("inputs_embeds", "params"):
        prob = prepare(model, batch, wrt=wrt)
        part = prob.slice(1, 2)
        assert part.x.shape[0] == 1 and part.y.shape[0] == 1
        whole = prob.loss(prob.model(prob.x), prob.y)
        assert rel_err(part.loss(part.model(part.x), part.y).detach(), whole[1:2].detach()) < 1e-14
    prob = prepare(model, batch, wrt="params")
    assert rel_norm(prob.model(prob.x[1:]).detach(), prob.model(prob.x).detach()[1:]) < 1e-14


def test_batch_encoding_and_llm_penalty_gradient():
    """A BatchEncoding is a batch; the λ penalty's gradient (Taylor) equals autograd's, train mode (dropout)."""
    model = build("gpt2-sdpa").train()
    batch = transformers.BatchEncoding(batch_for("gpt2-sdpa"))
    U = _directions(model, batch, "inputs_embeds")
    grads = {}
    for backend in ("autograd", "taylor"):
        model.zero_grad()
        torch.manual_seed(SEED)
        d = directional_derivs(model, batch, order=3, directions=U, wrt="inputs_embeds", backend=backend)
        d.abs().mean().backward()
        grads[backend] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert grads["taylor"].abs().max() > 0
    assert rel_norm(grads["taylor"], grads["autograd"]) < TOL


# ---------------------------------------------------------------------------------------------- parameter space
def _last_block(attn):
    return gpt2(attn, width=16, inner=32).eval(), batch_for("gpt2-eager")


def _dense_last_block_hessian(model, batch):
    """Dense Hessian of the mean per-sample loss w.r.t. the last block's parameters (names, flat vector)."""
    names = [n for n, _ in model.named_parameters() if n.startswith("transformer.h.1.")]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(theta):
        parts = dict(zip(names, torch.split(theta, [s.numel() for s in shapes])))
        new = {n: parts[n].reshape(s) for n, s in zip(names, shapes)}
        kw = {k: v for k, v in batch.items() if k != "labels"}
        logits = torch.func.functional_call(model, new, (), dict(kw, use_cache=False)).logits
        return causal_losses(logits, batch["labels"]).mean()

    with HigherOrderSafe():         # the fused SDPA kernels have no second derivative
        return flat, torch.autograd.functional.hessian(f, flat, vectorize=True)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hvp_and_eigs_of_the_last_block_against_a_dense_hessian(attn):
    """sdpa: transformers checks the attention mask's values in Python, so the HVPs are not traced (one
    forward-over-reverse pass per direction) and SDPA runs as its math (the fused kernel has no forward mode)."""
    model, batch = _last_block(attn)
    flat, H = _dense_last_block_hessian(model, batch)
    P = flat.numel()
    v = torch.randn(3, P, generator=torch.Generator().manual_seed(0), dtype=DT)
    got = hvp(model, batch, None, v, wrt="params", params="transformer.h.1")
    assert rel_err(got, v @ H, dim=0) < TOL                      # each product on its own scale
    by_module = hvp(model, batch, None, v[0], wrt="params", params=model.transformer.h[1])
    assert rel_norm(by_module, H @ v[0]) < TOL
    vals = hessian_eigs(model, data=batch, k=3, params=lambda n: n.startswith("transformer.h.1."),
                        generator=torch.Generator().manual_seed(1)).eigenvalues
    want = torch.linalg.eigvalsh(H).flip(0)[:3]
    assert rel_err(vals, want, dim=0) < TOL
    op = HessianOperator(model, data=[batch, batch], params="transformer.h.1")
    assert rel_err(op @ v, v @ H, dim=0) < TOL


def test_unpadded_causal_sdpa_and_tied_embedding_parameters():
    """Without padding transformers passes is_causal to SDPA; the tied embedding (named by its alias
    lm_head.weight) is one parameter in the input embedding and the output layer."""
    model, batch = build("gpt2-sdpa").eval(), batch_for("gpt2-sdpa")
    batch = dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]), labels=batch["input_ids"])
    U = _directions(model, batch, "inputs_embeds")
    ref = reference(model, batch, "inputs_embeds", U, 3)
    assert rel_err(directional_derivs(model, batch, order=3, directions=U, wrt="inputs_embeds"), ref) < TOL
    P = model.lm_head.weight.numel()
    v = torch.randn(2, P, generator=torch.Generator().manual_seed(0), dtype=DT) / P ** 0.5
    got = directional_derivs(model, batch, order=3, directions=v, wrt="params", params="lm_head.weight",
                             backend="taylor")
    want = directional_derivs(model, batch, order=3, directions=v, wrt="params", params=["transformer.wte.weight"],
                              backend="autograd")
    assert rel_err(got, want) < TOL


def test_params_mode_directional_derivs_with_a_filter(monkeypatch):
    monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward", _rms_norm_float64)
    model = build("llama").eval()
    batch = batch_for("llama")
    sel = [n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")]
    P = sum(p.numel() for n, p in model.named_parameters() if n in sel)
    v = torch.randn(2, P, generator=torch.Generator().manual_seed(0), dtype=DT) / P ** 0.5
    ref = directional_derivs(model, batch, order=3, directions=v, wrt="params", params=sel, backend="autograd")
    for backend in ("taylor", "fused"):
        got = directional_derivs(model, batch, order=3, directions=v, wrt="params", params=sel, backend=backend)
        assert rel_err(got, ref) < 1e-10, backend


def test_input_space_hvp_holds_padding_fixed():
    model, batch = build("gpt2-eager").eval(), batch_for("gpt2-eager")
    e = model.get_input_embeddings()(batch["input_ids"]).detach()
    v = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0), dtype=DT)
    got = hvp(model, batch, None, v, wrt="inputs_embeds")
    am = batch["attention_mask"][:, :, None].to(DT)

    def total(x):
        return causal_losses(model(inputs_embeds=x, attention_mask=batch["attention_mask"]).logits,
                             batch["labels"]).sum()

    with HigherOrderSafe():
        want = torch.autograd.functional.hvp(total, e, v * am)[1] * am
    assert rel_norm(got, want) < TOL


# ---------------------------------------------------------------------------------------------- errors, packaging
class _Bessel(nn.Module):
    def forward(self, x):
        return torch.special.i0e(x)


def test_unknown_op_names_op_and_module():
    model, batch = build("gpt2-eager").eval(), batch_for("gpt2-eager")
    model.transformer.h[1].mlp.act = _Bessel()
    with pytest.raises(NotImplementedError, match=r"no rule for op 'special_i0e'.*transformer\.h\.1\.mlp\.act"):
        directional_derivs(model, batch, order=2, directions=1, wrt="inputs_embeds", backend="taylor")


def test_a_failing_rule_raises_the_clear_error(monkeypatch):
    from lamda_ext.taylor import series
    monkeypatch.setitem(series.RULES, "tanh", lambda x: x.hi[99])          # a rule with a bug: IndexError
    model, batch = build("bert").eval(), batch_for("bert")
    with pytest.raises(NotImplementedError, match=r"op 'tanh' in this form.*bert\.pooler\.activation.*IndexError"):
        directional_derivs(model, batch, order=2, directions=1, wrt="inputs_embeds", backend="taylor")


def test_bad_batches():
    model, batch = build("gpt2-eager").eval(), batch_for("gpt2-eager")
    with pytest.raises(ValueError, match="wrt='inputs_embeds'"):
        directional_derivs(model, batch, order=2, directions=1)
    with pytest.raises(ValueError, match="takes x as a batch mapping"):
        directional_derivs(model, torch.zeros(2, 3, dtype=DT), torch.tensor([0, 1]), wrt="inputs_embeds")
    with pytest.raises(ValueError, match="has no 'labels'"):
        directional_derivs(model, {k: v for k, v in batch.items() if k != "labels"}, wrt="inputs_embeds")
    bad = dict(batch, labels=batch["labels"].masked_fill(batch["labels"] == batch["labels"][0, 1], V + 3))
    with pytest.raises(ValueError, match=f"label {V + 3} at position"):
        directional_derivs(model, bad, order=2, directions=1, wrt="inputs_embeds")
    with pytest.raises(ValueError, match="params= selects the parameters for wrt='params'"):
        directional_derivs(model, batch, wrt="inputs_embeds", params="transformer.h.1")
    with pytest.raises(ValueError, match="no parameter or submodule named 'transformer.h.7'"):
        hvp(model, batch, None, torch.zeros(3, dtype=DT), params=["transformer.h.7"])


def test_example_hf_lambda(capsys):
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "hf_lambda.py"
    spec = importlib.util.spec_from_file_location("hf_lambda", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--order", "4"])
    assert out["derivs"].shape == (2, 15, 4) and torch.isfinite(out["lambda"]).all()
    vals = out["eigs"].eigenvalues
    assert vals.shape == (5,) and bool(out["eigs"].converged.all()) and bool((vals[:-1] >= vals[1:]).all())
    assert "top-5 Hessian eigenvalues of the last block" in capsys.readouterr().out


def test_core_does_not_import_transformers():
    code = "import sys, lamda_ext, lamda_ext.batches; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
