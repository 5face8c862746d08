"""The model's settings, written once: `ModelConfig`, its rules, and the handout's model. No torch import here.

Every other place that names a model setting reads it from this file: `TransformerLM` builds from a ModelConfig;
the `train`, `model-info`, `probe` and `sweep` flags and TOML configs take each field's help text, choices and
default from its metadata (`commands/_flags.py`); `model_info` counts parameters and FLOPs from it; checkpoints save
`ModelConfig.to_dict()`. Importing it costs no torch, so `cs336-basics COMMAND --help` stays instant.

    >>> ModelConfig.from_settings({"vocab_size": 100, "context_length": 16, "d_model": 32, "num_layers": 2,
    ...                            "num_heads": 4, "d_ff": 0, "lr": 1e-3}).resolved_d_ff   # d_ff 0: the default width
    128
"""

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, get_args

NormPlacement = Literal["pre", "post", "none"]
PositionKind = Literal["rope", "sinusoidal", "learned", "none"]
FeedForwardKind = Literal["swiglu", "silu", "relu2"]
AttentionBackend = Literal["scratch", "sdpa"]
KernelKind = Literal["torch", "triton"]

# The handout's TinyStories model: the defaults of the settings that ModelConfig itself requires, for the `train` and
# `model-info` flags (d_ff 1344 is the handout's; ModelConfig's own default None means the 8/3 rule, 1408 here).
HANDOUT_MODEL: dict[str, int] = dict(
    vocab_size=10_000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344
)


# The Muon optimizer's learning-rate adjustments by matrix shape (optimizer.Muon; TrainConfig.muon_adjust_lr).
MUON_LR_ADJUSTMENTS = ("original", "match_rms_adamw", "spectral_unclamped")


def _setting(help: str, default: Any = None, required: bool = False, **extra) -> Any:
    """A ModelConfig field: its default (none when required), the flag's help text and optional flag details."""
    metadata = {"help": help, "group": "model", **extra}
    return field(metadata=metadata) if required else field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything that defines a TransformerLM; saved with every checkpoint (see `to_dict`).

    Its switches are all off by default: the assignment's ablations (norm placement, position encoding,
    feed-forward kind, tied embeddings), the modern recipe's (`qk_norm`, `ffn="relu2"`, `logit_softcap`,
    `zero_init_proj`; docs/recipe.md) and the opt-in fast paths (`attention_backend="sdpa"`, `kernels="triton"`),
    each parity-tested against the from-scratch code.
    """

    vocab_size: int = _setting("vocabulary size (ids 0 .. V-1)", required=True)
    context_length: int = _setting("context length in tokens", required=True)
    d_model: int = _setting("model width", required=True)
    num_layers: int = _setting("number of Transformer blocks", required=True)
    num_heads: int = _setting("attention heads (d_model must be divisible by it)", required=True)
    d_ff: int | None = _setting(
        "feed-forward hidden width (0 = 8/3·d_model rounded up to 64 for swiglu, 4·d_model for silu and relu2)",
        unset="the rule of 0",
    )
    rope_theta: float = _setting("RoPE base θ", 10_000.0)
    norm: NormPlacement = _setting("RMSNorm placement", "pre")
    positions: PositionKind = _setting("position encoding (absolute ones are added to the embeddings)", "rope")
    ffn: FeedForwardKind = _setting("feed-forward kind", "swiglu")
    tie_embeddings: bool = _setting("share the input embedding and LM head matrix", False)
    attention_backend: AttentionBackend = _setting(
        "attention kernel: the from-scratch code or PyTorch's fused SDPA (opt-in, parity-tested; faster on GPUs)",
        "scratch",
    )
    norm_eps: float = _setting("RMSNorm ε", 1e-5)
    kernels: KernelKind = _setting("fused Triton kernels on CUDA (opt-in) or plain torch", "torch")
    # the modern recipe's switches (docs/recipe.md)
    qk_norm: bool = _setting("RMSNorm (learnable gains) of each head's q and k before RoPE", False)
    logit_softcap: float | None = _setting("cap c of the logits: c·tanh(logits / c); 0 = off", None, unset="off")
    zero_init_proj: bool = _setting("attention output_proj and feed-forward w2 start at zero", False)

    def __post_init__(self):
        check_positive(
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
        )
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.d_ff is not None:
            check_positive(d_ff=self.d_ff)
        for f in fields(self):
            allowed = get_args(f.type)
            if allowed and all(isinstance(a, str) for a in allowed) and getattr(self, f.name) not in allowed:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} must be one of {allowed}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps={self.norm_eps} must be > 0")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be > 0")
        check_kernels(self.kernels, self.attention_backend)
        for name in ("qk_norm", "zero_init_proj", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or not cap >= 0):
            raise ValueError(f"logit_softcap={cap!r} must be a number > 0 (the cap c), or 0/None for off")
        if cap == 0:
            object.__setattr__(self, "logit_softcap", None)  # one spelling of "off", so saved configs compare equal
        elif cap is not None:
            object.__setattr__(self, "logit_softcap", float(cap))
        if self.positions == "rope" and (self.d_model // self.num_heads) % 2 != 0:
            raise ValueError(
                f"RoPE needs an even head dim, but d_model={self.d_model} / num_heads={self.num_heads} is odd"
            )

    @property
    def resolved_d_ff(self) -> int:
        """d_ff, or the default width: 8/3·d_model rounded up to a multiple of 64 (swiglu), 4·d_model (silu, relu2)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn in ("silu", "relu2"):
            return 4 * self.d_model
        return 64 * math.ceil(8 * self.d_model / 3 / 64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_settings(cls, values: dict[str, Any]) -> "ModelConfig":
        """The ModelConfig of the model fields in `values` (other keys, e.g. a run's lr, are ignored); d_ff 0 or None
        means the default width. The one place a flag's or file's d_ff 0 becomes None."""
        kwargs = {name: values[name] for name in FIELD_NAMES if name in values}
        if kwargs.get("d_ff") == 0:
            kwargs["d_ff"] = None
        return cls(**kwargs)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig))


def model_setting(name: str, default: Any = MISSING, **extra) -> Any:
    """A field of another settings dataclass (TrainConfig, ProbeConfig) that is ModelConfig's `name`: the same help
    text and choices, and ModelConfig's default (the handout's for a required one) unless `default` is given."""
    (f,) = [f for f in fields(ModelConfig) if f.name == name]
    if default is MISSING:
        default = HANDOUT_MODEL[name] if name in HANDOUT_MODEL else f.default
    return field(default=default, metadata={**f.metadata, **extra})


def check_int(name: str, value, minimum: int) -> None:
    """Raise ValueError naming `name` unless `value` is an integer (not a bool) >= minimum."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} must be {rule}")


def check_positive(**values: int) -> None:
    """Raise ValueError naming the first value that is not a positive integer."""
    for name, value in values.items():
        check_int(name, value, 1)


def check_kernels(kernels: str, attention_backend: str = "scratch") -> None:
    """kernels: "torch" (the plain code, the default) or "triton" (the fused kernels, which need Triton)."""
    if kernels not in get_args(KernelKind):
        raise ValueError(f"kernels={kernels!r} must be one of {get_args(KernelKind)}")
    if kernels == "triton":
        from cs336_basics._kernels import triton_kernels  # (imports torch: only for the opt-in kernels)

        triton_kernels.check_available()
        if attention_backend != "scratch":
            raise ValueError(
                f"kernels='triton' brings its own attention; attention_backend={attention_backend!r} must be 'scratch'"
            )
