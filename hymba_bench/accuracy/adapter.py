"""lm-eval adapter: any variant (and checkpoint) as an lm-eval model, registered as
`hymba_bench`.

It subclasses lm-eval's `TemplateLM`, which owns the request plumbing (context/continuation
splitting with word-boundary spaces moved to the continuation, empty contexts conditioned on the
prefix token); this class supplies the tokenizer and the scoring:
- `_loglikelihood_tokens`: batched by length with right padding (a causal model's logits do not
  see the padding to their right), exact sums of continuation log-probabilities.
- `loglikelihood_rolling`: lm-eval's rolling windows over documents longer than the context.
- `generate_until`: greedy, batched over prompts of equal token length, with the inference
  cache; stop strings and `max_gen_toks` honoured. Sampling is not supported (greedy only).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from hymba_bench.accuracy.tokenizer import check_vocab, load_tokenizer
from hymba_bench.model.generate import greedy_generate

if TYPE_CHECKING:
    from hymba_bench.model.lm import HybridLM


@register_model("hymba_bench")
class HymbaBenchLM(TemplateLM):
    def __init__(self, variant: str = "e-meta-tokens", profile: str = "tiny",
                 checkpoint: str | Path | None = None, batch_size: int | str = 8,
                 device: str = "cpu", max_length: int | None = None,
                 variant_files: list[Path] | None = None, model: HybridLM | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        from hymba_bench import build_model

        self.model: HybridLM
        if model is not None:  # an already-built (e.g. just trained) model
            self.model = model
        elif checkpoint:
            from hymba_bench.accuracy.checkpoint import load_checkpoint
            from hymba_bench.model.hf import is_hf_checkpoint, load_pretrained

            if is_hf_checkpoint(Path(checkpoint)):  # released weights: their config.json rules
                self.model = load_pretrained(Path(checkpoint), device)
            else:
                self.model, _ = load_checkpoint(Path(checkpoint), variant, device)
        else:
            self.model = build_model(variant, profile, device=device, variant_files=variant_files,
                                     **overrides)
        self.model.eval()
        self.tokenizer = load_tokenizer(Path(checkpoint) if checkpoint else None)
        check_vocab(self.model.cfg.vocab_size, self.tokenizer.vocab_size, self.model.cfg.name)
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 8
        self.max_length = int(max_length or self.model.cfg.max_seq_len)
        self._device = torch.device(device)

    # ------------------------------------------------------------------ what TemplateLM needs
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id  # an empty context is conditioned on BOS, as in training

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string)

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether greedy decoding would produce it.

        Each token is predicted from at most `max_length` tokens before it (the context cut
        from the left, as lm-eval's HF model cuts it). A continuation longer than that is
        scored in pieces of `max_length` tokens, each after the tokens before it, and summed
        (HFLM refuses such a continuation; at proxy scale a PIQA solution outgrows the window).
        """
        total = [0.0] * len(pairs)
        greedy = [True] * len(pairs)
        rows = []
        for i, (ctx, cont) in enumerate(pairs):
            for s in range(0, len(cont), self.max_length):
                piece = cont[s:s + self.max_length]
                whole = (ctx + cont[:s + len(piece)])[-(self.max_length + 1):]
                rows.append((i, whole[:-1], piece))
        rows.sort(key=lambda r: -len(r[1]))
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = len(chunk[0][1])
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, (_, inp, _) in enumerate(chunk):
                ids[j, :len(inp)] = torch.tensor(inp)
            logprobs = F.log_softmax(self.model(ids.to(self._device)).float(), dim=-1).cpu()
            for j, (i, inp, piece) in enumerate(chunk):
                targets = torch.tensor(piece, dtype=torch.long)
                lp = logprobs[j, len(inp) - len(piece):len(inp)]  # the positions predicting it
                total[i] += float(lp.gather(-1, targets[:, None]).sum())
                greedy[i] = greedy[i] and bool((lp.argmax(-1) == targets).all())
        return list(zip(total, greedy, strict=True))

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """((context, continuation), context ids, continuation ids) -> (log p, greedy)."""
        results = self._score([(ctx, cont) for _, ctx, cont in requests])
        for (args, _, _), res in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", args, res)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for r in requests:
            (text,) = r.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(score for score, _ in self._score(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple[int, int, tuple[str, ...]], list[tuple[int, list[int]]]] = defaultdict(list)
        for i, r in enumerate(requests):
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context) or [self.prefix_token_id]
            ids = ids[-max(1, self.max_length - max_new):]
            groups[(len(ids), max_new, tuple(until))].append((i, ids))
        for (_, max_new, until), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                prompt = torch.tensor([ids for _, ids in chunk], device=self._device)
                stop = self._stopper(list(until))
                generated = greedy_generate(self.model, prompt, max_new, self.tokenizer.eos_id, stop)
                for (i, _), row in zip(chunk, generated.tolist(), strict=True):
                    text = self.tokenizer.decode([t for t in row if t != self.tokenizer.eos_id])
                    out[i] = _cut(text, list(until))
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out  # type: ignore[return-value]

    def _stopper(self, until: list[str]) -> Any:
        if not until:
            return None

        def stop(generated: torch.Tensor) -> torch.Tensor:
            texts = [self.tokenizer.decode(row) for row in generated.tolist()]
            return torch.tensor([any(u in t for u in until) for t in texts])

        return stop


def _cut(text: str, until: list[str]) -> str:
    for u in until:
        if u and u in text:
            text = text.split(u, 1)[0]
    return text
