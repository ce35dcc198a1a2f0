"""The benchmark's workloads: settings, models, random tasks, and the meta-gradient of each implementation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call

from metarun.algorithms import MAML, Reptile
from metarun.algorithms.caching import cached
from metarun.algorithms.scopes import scope_names
from metarun.episodes import Episode
from metarun.evaluation import eval_mode
from metarun.loop import accumulate_meta_gradient
from metarun.model import TransformerClassifier
from metarun.torch_workarounds import twice_differentiable_attention

ALGOS = ("maml", "fomaml", "reptile")
PEERS = ("higher", "naive")
MODELS = {  # the reference workload, and conf/model's small and base at the same vocabulary
    "reference": dict(d_model=128, n_layers=2, n_heads=4, d_ff=256, max_len=32),
    "small": dict(d_model=128, n_layers=4, n_heads=4, d_ff=256, max_len=32),
    "base": dict(d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_len=32),
}
MINILM = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "minilm.yaml")  # model=minilm's
MINILM_LEN = 128  # tokens per text for model "minilm" (--lora)


@dataclass(frozen=True)
class Setting:
    impl: str  # metarun | metarun-recompute | metarun-batched | higher | naive | forward-backward
    algo: str
    model: str = "reference"
    inner_steps: int = 5
    vocab: int = 8000
    n_way: int = 5
    k_shot: int = 5
    n_query: int = 15
    meta_batch: int = 4
    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    device: str = "cpu"
    scope: str = "all"  # what both loops adapt (algo.inner_scope and outer_scope): all | lora
    lora_rank: int = 0  # model.lora_rank
    lora_layers: int | None = None  # model.lora_layers
    min_len: int = 8  # the shortest random text; the model's max_len fills every text


def max_len(s: Setting) -> int:
    return MINILM_LEN if s.model == "minilm" else MODELS[s.model]["max_len"]


def lora_settings(inner_steps: list[int], meta_batch: int, device: str, rank: int = 8, top: int = 2) -> list[Setting]:
    """--lora: second-order MAML on MiniLM with every text 128 tokens long, 5-way 5-shot with 5 queries per class
    (MiniLM's tuned meta-training episodes): the whole encoder, then LoRA adapters on every layer and on the top
    `top` layers only (the layers below read from a table, as meta-training reads them), both loops on the adapters
    and the head."""
    task = dict(n_query=5, min_len=MINILM_LEN, meta_batch=meta_batch, device=device)
    scopes = (("all", 0, None), ("lora", rank, None), ("lora", rank, top))
    return [Setting("metarun", "maml", "minilm", k, scope=scope, lora_rank=r, lora_layers=layers, **task)
            for k in inner_steps for scope, r, layers in scopes]  # fmt: skip


def make_model(s: Setting, dtype=torch.float32) -> nn.Module:
    """The setting's model, without dropout: a TransformerClassifier of MODELS, or all-MiniLM-L6-v2 (offline from
    its installed package)."""
    torch.manual_seed(0)
    lora = dict(lora_rank=s.lora_rank, lora_layers=s.lora_layers)
    if s.model == "minilm":
        from metarun.pretrained import PretrainedClassifier

        model = PretrainedClassifier(MINILM.name_or_path, s.n_way, s.vocab, pad_id=0, max_len=MINILM_LEN,
                                     package=MINILM.package, sha256=MINILM.sha256, dropout=0.0, **lora)  # fmt: skip
    else:
        model = TransformerClassifier(s.vocab, s.n_way, dropout=0.0, **MODELS[s.model], **lora)
    return model.to(s.device, dtype)


def trained_names(s: Setting, model: nn.Module) -> list[str]:
    """What the outer optimizer holds: the setting's scope."""
    return scope_names(model, s.scope, 0, "scope")


def make_episodes(s: Setting, seed: int = 0) -> list[Episode]:
    """Random token ids, lengths min_len..max_len with the rest padded; labels 0..N-1."""
    g = torch.Generator().manual_seed(seed)
    width = max_len(s)

    def tokens(rows: int) -> torch.Tensor:
        x = torch.randint(1, s.vocab, (rows, width), generator=g)
        lengths = torch.randint(s.min_len, width + 1, (rows,), generator=g)
        x[torch.arange(width)[None, :] >= lengths[:, None]] = 0
        return x

    labels = torch.arange(s.n_way)
    return [
        Episode(
            tokens(s.n_way * s.k_shot),
            labels.repeat_interleave(s.k_shot),
            tokens(s.n_way * s.n_query),
            labels.repeat_interleave(s.n_query),
            labels,
        ).to(torch.device(s.device))  # fmt: skip
        for _ in range(s.meta_batch)
    ]


# --- implementations: each sets .grad on the model's parameters to the meta-batch's mean meta-gradient ---


def metarun_gradient(s: Setting):
    """What `metarun` runs: the algorithm's meta-gradient through the loop's own accumulation, reading what
    meta-training leaves unchanged from a table built at the first step, as the loop reads it (metarun-batched:
    the meta-batch's tasks at once under vmap, as `algo.batch_tasks=auto` does on CUDA)."""
    batched = s.impl == "metarun-batched"
    settings = dict(inner_steps=s.inner_steps, inner_lr=s.inner_lr, head_init="learned", batch_tasks=batched,
                    inner_scope=s.scope, outer_scope=s.scope)  # fmt: skip
    memory = "recompute" if s.impl == "metarun-recompute" else "store"
    built = []  # the algorithm, with its table: the model and the tasks are the same at every step

    def step(model, episodes):
        params = dict(model.named_parameters())
        if not built:
            if s.algo == "reptile":
                algorithm = Reptile(model, **settings)
            else:
                algorithm = MAML(model, first_order=s.algo == "fomaml", memory=memory, **settings)
            with eval_mode(model):  # itself unless the scope leaves the bottom layers alone
                tokens = [x for e in episodes for x in (e.support_x, e.query_x)]
                built.append(cached(algorithm, params, tokens, algorithm.trained_names()))
        accumulate_meta_gradient(built[0], params, episodes)

    return step


def naive_gradient(s: Setting):
    """The textbook unroll: autograd.grad per inner step (create_graph for second order), one task at a time."""

    def step(model, episodes):
        params = dict(model.named_parameters())
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for e in episodes:
            fast = {n: p if s.algo == "maml" else p.detach().requires_grad_() for n, p in params.items()}
            for _ in range(s.inner_steps):
                loss = F.cross_entropy(functional_call(model, fast, (e.support_x,)), e.support_y)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=s.algo == "maml")
                fast = {n: p - s.inner_lr * g for (n, p), g in zip(fast.items(), grads)}
                if s.algo != "maml":
                    fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
            if s.algo == "reptile":
                task = {n: params[n].detach() - fast[n] for n in params}
            else:
                query = F.cross_entropy(functional_call(model, fast, (e.query_x,)), e.query_y)
                wrt = params if s.algo == "maml" else fast
                task = dict(zip(params, torch.autograd.grad(query, [wrt[n] for n in params])))
            for n in total:
                total[n] += task[n]
        for n, p in params.items():
            p.grad = total[n] / len(episodes)

    return step


def higher_gradient(s: Setting):
    import higher

    def step(model, episodes):
        params = list(model.parameters())
        total = [torch.zeros_like(p) for p in params]
        inner_opt = torch.optim.SGD(params, lr=s.inner_lr)
        for e in episodes:
            with higher.innerloop_ctx(
                model, inner_opt, copy_initial_weights=False, track_higher_grads=s.algo == "maml"
            ) as (fmodel, diffopt):
                for _ in range(s.inner_steps):
                    diffopt.step(F.cross_entropy(fmodel(e.support_x), e.support_y))
                if s.algo == "reptile":
                    task = [p.detach() - f.detach() for p, f in zip(params, fmodel.parameters())]
                else:
                    query = F.cross_entropy(fmodel(e.query_x), e.query_y)
                    wrt = params if s.algo == "maml" else list(fmodel.parameters())
                    task = torch.autograd.grad(query, wrt)
            for t, g in zip(total, task):
                t += g
        for p, t in zip(params, total):
            p.grad = t / len(episodes)

    return step


IMPLEMENTATIONS = {
    "metarun": metarun_gradient,
    "metarun-recompute": metarun_gradient,
    "metarun-batched": metarun_gradient,
    "higher": higher_gradient,
    "naive": naive_gradient,
}


def meta_gradient(s: Setting, dtype=torch.float32) -> dict[str, torch.Tensor]:
    model, episodes = make_model(s, dtype), make_episodes(s)
    with twice_differentiable_attention() if s.algo == "maml" else contextlib.nullcontext():
        IMPLEMENTATIONS[s.impl](s)(model, episodes)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}
