"""Look inside a model and a tokenizer: attention weights, per-token loss, next-token guesses, the logit lens, token
pieces with byte offsets, and the merge trace of one pre-token. Functions return tensors and plain data; `display.py`
draws them.

Every model function works on any `TransformerLM`, whatever its switches (norm placement, positions, feed-forward,
attention backend, kernels), because none of them re-implements the forward pass:

- attention weights come from the queries and keys each `MultiHeadSelfAttention` actually used (its `qk_hook`, after
  RoPE, with any cached keys), put through the from-scratch `layers.attention_probabilities`; so the fused kernels
  (`attention_backend="sdpa"`, `kernels="triton"`), which never form the weights, get them recomputed, not guessed;
- the logit lens reads each block's output with ordinary forward hooks and applies the model's own `ln_final` and
  `lm_head`.

Shape letters: L layers, B batch, H heads, T sequence (Tq queries, Tk keys), V vocabulary, K top-k.
"""

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cs336_basics.kv_cache import KVCache
from cs336_basics.layers import attention_probabilities, causal_mask, softmax
from cs336_basics.model import TransformerLM
from cs336_basics.pretokenize import GPT2_RE
from cs336_basics.tokenizer import Tokenizer

# --------------------------------------------------------------------------------------------------------------------
# The model


@torch.no_grad()
def attention_weights(
    model: TransformerLM,
    ids: Int[Tensor, " ... T"],
    token_positions: Int[Tensor, " ... T"] | None = None,
    kv_cache: KVCache | None = None,
) -> Float[Tensor, " L ... H Tq Tk"]:
    """Every layer's attention weights for `ids` (T,) or (B, T): (L, H, T, T) or (L, B, H, T, T), float64.

    Row i of a map is softmax(q_i·Kᵀ/√d, causal) over the keys, recomputed in float64 from the q and k that layer
    used, so it is right under every attention backend. Rows sum to one; future keys get exactly zero. With
    `kv_cache` the ids continue the cached ones (the cache grows, as in `model(ids, kv_cache=cache)`), and each map
    is (Tq = T new queries) x (Tk = cached + T keys).

        w = attention_weights(model, torch.tensor(tokenizer.encode("once upon a time")))
        w[-1, 0]  # the last layer's head 0: a (T, T) map, row = query, column = key
    """
    maps: list[Tensor] = []

    def keep(q: Tensor, k: Tensor) -> None:
        if q.device.type == "mps":  # no float64 there
            q, k = q.cpu(), k.cpu()
        causal = causal_mask(q.shape[-2], k.shape[-2], q.device)
        maps.append(attention_probabilities(q.double(), k.double(), causal))

    with qk_hooks(model, keep):
        _forward(model, ids, token_positions, kv_cache)
    weights = torch.stack(maps)  # (L, B, H, Tq, Tk)
    return weights if ids.dim() == 2 else weights[:, 0]


@contextmanager
def qk_hooks(model: TransformerLM, hook: Callable[[Tensor, Tensor], None]) -> Iterator[None]:
    """Inside the `with`, every attention layer calls `hook(q, k)` on each forward, in layer order (see
    `MultiHeadSelfAttention.qk_hook`): q (..., H, Tq, D), k (..., H, Tk, D), after RoPE. Removed on exit.

        with qk_hooks(model, lambda q, k: print(q.shape, k.shape)):
            model(ids)
    """
    attentions = [layer.attn for layer in model.layers]
    for attn in attentions:
        if "qk_hook" in vars(attn):
            raise RuntimeError("qk_hooks are already set on this model (nested qk_hooks are not supported)")
    try:
        for attn in attentions:
            attn.qk_hook = hook
        yield
    finally:
        for attn in attentions:
            vars(attn).pop("qk_hook", None)  # back to the class's None


@torch.no_grad()
def token_losses(model: TransformerLM, ids: Int[Tensor, " ... T"]) -> Float[Tensor, " ... T-1"]:
    """The surprisal -log p(ids[t+1] | ids[..t]) of each token after the first, in nats, float32 or wider.

    Their mean is `cross_entropy(model(ids[..., :-1]), ids[..., 1:])`; the first token has no loss (nothing predicts
    it).
        losses = token_losses(model, torch.tensor(tokenizer.encode("once upon a time")))
        losses.mean()  # the text's loss per token; .exp() is its perplexity
    """
    _check_ids(ids, minimum=2)
    logits = _forward(model, ids[..., :-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    target = ids[..., 1:, None]
    return (logits.logsumexp(dim=-1, keepdim=True) - logits.gather(-1, target)).squeeze(-1)


class TopK(NamedTuple):
    """The k most likely next tokens at each position, most likely first."""

    probs: Float[Tensor, " ... T K"]
    ids: Int[Tensor, " ... T K"]


@torch.no_grad()
def top_k_next(model: TransformerLM, ids: Int[Tensor, " ... T"], k: int = 5) -> TopK:
    """At each position t, the k most likely tokens to follow ids[..t], with their probabilities.

    guesses = top_k_next(model, torch.tensor(tokenizer.encode("once upon a")), k=3)
    [tokenizer.decode([i]) for i in guesses.ids[-1].tolist()]  # e.g. [' time', ' day', ' little']
    """
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= model.config.vocab_size:
        raise ValueError(f"k={k!r} must be an integer in [1, vocab_size={model.config.vocab_size}]")
    top = softmax(_forward(model, ids), dim=-1).topk(k, dim=-1)
    return TopK(top.values, top.indices)


@torch.no_grad()
def logit_lens(model: TransformerLM, ids: Int[Tensor, " ... T"]) -> Float[Tensor, " L+1 ... T V"]:
    """The residual stream after the embeddings (row 0) and after each block (row i), each put through the model's
    final norm and LM head: what the model would predict if it stopped there. The last row is the model's logits.

        lens = logit_lens(model, torch.tensor(tokenizer.encode("once upon a time")))
        lens.softmax(-1).amax(-1)  # (L+1, T): how sure each layer already is at each position
    """
    residuals: list[Tensor] = []
    handles = [model.layers[0].register_forward_pre_hook(lambda _module, args: residuals.append(args[0]))]
    for layer in model.layers:
        handles.append(layer.register_forward_hook(lambda _module, _args, out: residuals.append(out)))
    try:
        _forward(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    if model.config.norm != "none":
        residuals = [model.ln_final(x) for x in residuals]
    lens = torch.stack([model.lm_head(x) for x in residuals])  # (L+1, B, T, V)
    return lens if ids.dim() == 2 else lens[:, 0]


def _forward(model: TransformerLM, ids: Tensor, token_positions=None, kv_cache=None) -> Tensor:
    """model(ids) for (T,) or (B, T) ids; the logits have the ids' batch shape."""
    _check_ids(ids)
    if ids.dim() == 2:
        return model(ids, token_positions, kv_cache)
    positions = None if token_positions is None else token_positions[None]
    return model(ids[None], positions, kv_cache)[0]


def _check_ids(ids: Tensor, minimum: int = 1) -> None:
    if not isinstance(ids, Tensor) or ids.dim() not in (1, 2) or ids.shape[-1] < minimum:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"ids={shape} must be a (T,) or (B, T) tensor of token ids with T >= {minimum}")


# --------------------------------------------------------------------------------------------------------------------
# The tokenizer


class TokenPiece(NamedTuple):
    """One token of a text: its id, its bytes, and where they sit in the text's UTF-8 bytes, [start, end)."""

    id: int
    bytes: bytes
    start: int
    end: int

    @property
    def text(self) -> str:
        """The piece as text (a piece that splits a character shows U+FFFD)."""
        return self.bytes.decode("utf-8", errors="replace")


def token_pieces(tokenizer: Tokenizer, text: str) -> list[TokenPiece]:
    """`text`'s tokens, special tokens included, each with its byte offsets: together they cover text.encode()
    exactly, in order, with no gap or overlap.

        pieces = token_pieces(tokenizer, "hello world<|endoftext|>")
        [(p.text, p.start, p.end) for p in pieces]  # [('hello', 0, 5), (' world', 5, 11), ('<|endoftext|>', 11, 24)]
    """
    pieces, start = [], 0
    for token_id in tokenizer.encode(text):
        token = tokenizer.vocab[token_id]
        pieces.append(TokenPiece(token_id, token, start, start + len(token)))
        start += len(token)
    if b"".join(p.bytes for p in pieces) != text.encode("utf-8"):  # BPE is lossless; anything else is a bug
        raise RuntimeError("the tokens' bytes do not spell the text: the tokenizer is not lossless")
    return pieces


@dataclass(frozen=True)
class MergeStep:
    """One merge: the pair (a, b), its rank in `tokenizer.merges`, and the pre-token's parts after it fired."""

    rank: int
    pair: tuple[bytes, bytes]
    parts: tuple[bytes, ...]


@dataclass(frozen=True)
class MergeTrace:
    """How BPE turns one pre-token into tokens: its bytes, the merges in the order they fire, the final ids."""

    pretoken: str
    start: tuple[bytes, ...]
    steps: tuple[MergeStep, ...]
    ids: tuple[int, ...]

    @property
    def parts(self) -> tuple[bytes, ...]:
        """The final tokens' bytes."""
        return self.steps[-1].parts if self.steps else self.start


def merge_trace(tokenizer: Tokenizer, pretoken: str) -> MergeTrace:
    """Replay BPE on one pre-token: start from its bytes and, while some adjacent pair is in the merge list, merge
    every occurrence (left to right) of the pair learned first. The final ids equal `tokenizer.encode(pretoken)`.

        trace = merge_trace(tokenizer, " extraordinary")
        [(s.pair, s.rank) for s in trace.steps], trace.ids
    """
    if pretoken in tokenizer.special_tokens:
        raise ValueError(f"pretoken={pretoken!r} is a special token: it is one id, with no merges")
    if not isinstance(pretoken, str) or GPT2_RE.findall(pretoken) != [pretoken]:
        found = GPT2_RE.findall(pretoken) if isinstance(pretoken, str) else type(pretoken).__name__
        raise ValueError(f"pretoken={pretoken!r} must be exactly one GPT-2 pre-token; it splits into {found!r}")
    ranks, to_id = _bpe_tables(tokenizer)
    parts = [bytes([b]) for b in pretoken.encode("utf-8")]
    start, steps = tuple(parts), []
    while len(parts) > 1:
        rank, pair = min((ranks.get(pair, len(ranks)), pair) for pair in zip(parts, parts[1:], strict=False))
        if rank == len(ranks):
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
        steps.append(MergeStep(rank, pair, tuple(parts)))
    return MergeTrace(pretoken, start, tuple(steps), tuple(to_id[p] for p in parts))


_TABLES: "weakref.WeakKeyDictionary[Tokenizer, tuple[dict, dict]]" = weakref.WeakKeyDictionary()


def _bpe_tables(tokenizer: Tokenizer) -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    """merge pair -> rank (a repeated pair: its first) and token -> id (a repeated token: its lowest id), as the
    tokenizer builds them; kept per tokenizer, which fixes its tables when it is made."""
    if tokenizer not in _TABLES:
        ranks = {pair: rank for rank, pair in reversed(list(enumerate(tokenizer.merges)))}
        to_id = {token: token_id for token_id, token in sorted(tokenizer.vocab.items(), reverse=True)}
        _TABLES[tokenizer] = ranks, to_id
    return _TABLES[tokenizer]
