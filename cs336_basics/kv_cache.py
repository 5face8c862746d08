"""The key/value cache of incremental decoding (`TransformerLM.new_kv_cache`, `forward(..., kv_cache=...)`)."""

from torch import Tensor


class LayerKVCache:
    """One layer's keys and values (..., H, P, D), in a buffer preallocated to `max_len` positions at first use."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new (..., H, T, D) keys and values; return all of them so far, (..., H, P+T, D)."""
        new_len = self.length + k.shape[-2]
        if new_len > self.max_len:
            raise ValueError(f"KV cache holds at most {self.max_len} positions; {new_len} requested")
        if self.k is None:
            shape = (*k.shape[:-2], self.max_len, k.shape[-1])
            self.k = k.new_empty(shape)
            self.v = v.new_empty((*v.shape[:-2], self.max_len, v.shape[-1]))
        self.k[..., self.length : new_len, :] = k
        self.v[..., self.length : new_len, :] = v
        self.length = new_len
        return self.k[..., :new_len, :], self.v[..., :new_len, :]


class KVCache:
    """Per-layer caches of a TransformerLM; `length` is the number of positions already processed."""

    def __init__(self, num_layers: int, max_len: int):
        self.layers = [LayerKVCache(max_len) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0
