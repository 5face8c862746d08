"""Sampling from a TransformerLM: temperature (0 = greedy), top-k and nucleus (top-p) filtering, stop tokens, and a
KV cache (each new token costs one position). CLI: `cs336-basics generate` (cs336_basics/commands/generate.py).

    cs336-basics generate --checkpoint runs/tiny/ckpt_000200.pt --tokenizer tok/tiny --prompt "once upon a time" \
        --max-new-tokens 100 --temperature 0.8 --top-p 0.95 --device cpu
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cs336_basics.layers import softmax
from cs336_basics.model import TransformerLM


def sample_next_token(
    logits: Float[Tensor, " batch vocab_size"],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """One id per row. temperature 0 is greedy (argmax); top_k keeps the k most likely ids; top_p keeps the smallest
    set of most likely ids whose probability mass reaches p (always at least one)."""
    check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = softmax(logits.float() / temperature, dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        probs = torch.where(probs >= kth, probs, 0.0)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly more likely ids
        sorted_probs = torch.where(mass_before < top_p, sorted_probs, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs / probs.sum(dim=-1, keepdim=True), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: TransformerLM,
    prompt: Int[Tensor, " batch seq"],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Int[Tensor, " batch new"]:
    """Sample up to `max_new_tokens` ids after `prompt` (B, T); returns only the new ids (B, N).

    Rows that produced `eos_token_id` stop (their later positions are filled with it); generation ends early when
    every row has stopped. The model sees the last `context_length` positions. With `use_cache` (the default) a
    KV cache makes each new token cost one position; once the sequence outgrows the context, the window slides
    and is recomputed whole, exactly as without the cache, so both give the same tokens.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    check_sampling_args(temperature, top_k, top_p)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must have shape (batch, seq) with seq >= 1, got {tuple(prompt.shape)}")
    context_length = model.config.context_length
    ids = prompt
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    new_tokens = []
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model(ids[:, -context_length:])[:, -1]  # (B, V)
        elif cache is not None and cache.length < context_length:
            logits = model(ids[:, -1:], kv_cache=cache)[:, -1]  # one new position
        else:  # first step, or the window slid: (re)fill the cache with the whole window
            cache = model.new_kv_cache()
            logits = model(ids[:, -context_length:], kv_cache=cache)[:, -1]
        next_id = sample_next_token(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            next_id = torch.where(done, eos_token_id, next_id)
            done |= next_id == eos_token_id
        new_tokens.append(next_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    if not new_tokens:
        return prompt.new_empty(prompt.shape[0], 0)
    return torch.stack(new_tokens, dim=1)


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k} must be a positive integer")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")


# --------------------------------------------------------------------------------------------------------------------
# Text in, text out

EOS_TOKEN = "<|endoftext|>"


def generate_text(
    model: TransformerLM,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> str:
    """The continuation of `prompt` (text only, without the prompt), stopping at <|endoftext|> when it is a
    single token of `tokenizer` (any object with encode(str) -> list[int] and decode(list[int]) -> str)."""
    check_sampling_args(temperature, top_k, top_p)
    device = next(model.parameters()).device
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise ValueError("prompt='' is empty; give at least one character to continue")
    eos = tokenizer.encode(EOS_TOKEN)
    eos_id = eos[0] if len(eos) == 1 else None
    generator = torch.Generator(device=device).manual_seed(seed)
    new = generate(
        model,
        torch.tensor([prompt_ids], device=device),
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_id,
        generator=generator,
        use_cache=use_cache,
    )[0].tolist()
    if eos_id is not None and eos_id in new:
        new = new[: new.index(eos_id)]
    return tokenizer.decode(new)
