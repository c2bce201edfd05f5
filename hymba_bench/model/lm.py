"""The language model: embedding, meta tokens, the layer stack, final norm, tied head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hymba_bench.design.config import ModelConfig
from hymba_bench.model.blocks import DecoderLayer
from hymba_bench.model.cache import InferenceCache
from hymba_bench.model.context import Context
from hymba_bench.model.layers import RMSNorm
from hymba_bench.model.moe import MoE


class HybridLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # Learned meta tokens: prepended at prefill, RoPE positions 0..M-1, outputs dropped.
        self.meta_tokens = nn.Parameter(torch.empty(cfg.meta_tokens, cfg.d_model)) \
            if cfg.meta_tokens else None
        layers = [DecoderLayer(cfg, spec) for spec in cfg.layers]
        for spec in cfg.layers:
            if spec.tied_to is not None:
                layers[spec.index].tie_to(layers[spec.tied_to])
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
        for module in self.modules():  # then each mixer's own (dt, A, filter poles), in order
            own = getattr(module, "reset_mixer_parameters", None)
            if own is not None:
                own()
        if self.meta_tokens is not None:
            nn.init.normal_(self.meta_tokens, std=std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def aux_loss(self) -> Tensor | None:
        """The weighted MoE load-balancing loss of the last training forward pass, if any."""
        terms = [m.aux_loss for m in self.modules() if isinstance(m, MoE) and m.aux_loss is not None]
        return self.cfg.moe_aux_loss * torch.stack(terms).sum() if terms else None

    def allocate_cache(self, batch: int, max_seq_len: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> InferenceCache:
        p = self.embed_tokens.weight
        return InferenceCache(self.cfg, batch, max_seq_len, dtype or p.dtype, device or p.device)

    def forward(self, input_ids: Tensor, cache: InferenceCache | None = None) -> Tensor:
        """input_ids (B, L) -> logits (B, L, vocab) for the real tokens only.

        With a cache: the first call is the prefill (meta tokens prepended); later calls are
        decode steps from `cache.position`, several tokens running as successive one-token steps.
        A decode step reads its position from the cache on the device and advances it there, so
        it is one graph for every position (`torch.compile(model, fullgraph=True)` compiles it
        once; a CUDA graph replays it).
        """
        decode = cache is not None and cache.prefilled
        if decode and input_ids.shape[1] > 1:
            steps = [self.forward(input_ids[:, i:i + 1], cache) for i in range(input_ids.shape[1])]
            return torch.cat(steps, dim=1)
        x = self.embed_tokens(input_ids)  # (B, L, D)
        n_meta = 0
        if not decode and self.meta_tokens is not None:
            n_meta = self.meta_tokens.shape[0]
            x = torch.cat([self.meta_tokens.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        length = x.shape[1]
        if cache is not None:
            cache.advance(length, input_ids.shape[1])
        if decode:
            assert cache is not None
            positions = cache.position.view(1)
        else:
            positions = torch.arange(length, device=x.device)
        ctx = Context(positions, cache, decode, embeddings=x)
        for layer in self.layers:
            x = layer(x, ctx)
        if cache is not None:
            if decode:
                cache.position.add_(1)
            else:
                cache.position.fill_(length)
                cache.prefilled = True
        x = self.norm(x[:, n_meta:])
        return self.lm_head(x)


def instantiate(cfg: ModelConfig, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, seed: int | None = 0) -> HybridLM:
    """The one way a model is built. Weights are initialised right after
    `torch.manual_seed(seed)`, so a design built with the same seed has the same weights in every
    stage, command and test; `seed=None` leaves the generator alone (weights about to be loaded
    from a checkpoint). `device="meta"` builds without allocating (parameter counts)."""
    if seed is not None and torch.device(device).type != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        model = HybridLM(cfg)
    return model.to(dtype) if dtype is not None else model


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of a design, counted on the meta device (nothing allocated)."""
    return instantiate(cfg, "meta", seed=None).num_parameters()
