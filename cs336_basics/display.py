"""Drawing for notebooks: what `introspect.py` returns, as coloured text, tables and matplotlib figures.

Objects here show themselves as HTML in a notebook (`_repr_html_`) and as plain text anywhere else (`str`, `repr`);
figures are `matplotlib.figure.Figure`s made without pyplot (no global state: a notebook shows the one a cell
returns, a script saves it with `fig.savefig`). Nothing here computes a model quantity: that is introspect's job.
"""

import html
from collections.abc import Callable, Sequence

import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from torch import Tensor

from cs336_basics.introspect import MergeTrace, TokenPiece, token_losses, token_pieces
from cs336_basics.model import TransformerLM
from cs336_basics.tokenizer import Tokenizer

_PASTELS = ("#fde2a6", "#c6e6fb", "#d9f2c4", "#f7cde0", "#e2d7f5")  # alternating token backgrounds


def visible(text: str) -> str:
    """A token's text with its whitespace made visible: spaces as ·, newlines as ↵, tabs as →.

    visible(" once\\n")  # '·once↵'
    visible(tokenizer.decode([ids[0]]))  # one token, spaces shown
    """
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def token_labels(tokenizer: Tokenizer, ids: Sequence[int] | Tensor) -> list[str]:
    """One short visible label per token id, for figure axes.

    ids = tokenizer.encode("once upon a time")
    token_labels(tokenizer, ids)  # ['once', '·upon', '·a', '·time']
    """
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return [visible(tokenizer.decode([i])) for i in ids]


# --------------------------------------------------------------------------------------------------------------------
# Coloured text


class TokenText:
    """A text cut into its tokens, each optionally with a value (its loss): coloured boxes in a notebook (hover for
    id, byte offsets and value), `|`-separated tokens or one token per line as plain text.

    TokenText(token_pieces(tokenizer, "once upon a time"))  # boxes in a notebook
    print(TokenText(pieces, values=[None, 2.1, 0.3, 0.2]))  # one line per token with its value
    """

    def __init__(self, pieces: Sequence[TokenPiece], values: Sequence[float | None] | None = None, unit: str = ""):
        if values is not None and len(values) != len(pieces):
            raise ValueError(f"values has {len(values)} entries; it needs one per piece ({len(pieces)})")
        self.pieces = list(pieces)
        self.values = None if values is None else [None if v is None else float(v) for v in values]
        self.unit = unit

    def _repr_html_(self) -> str:
        spans = []
        scale = max((v for v in self.values or [] if v is not None), default=0.0) or 1.0
        for i, piece in enumerate(self.pieces):
            hint, ink = f"id {piece.id}, bytes {piece.start}..{piece.end}", "black"
            if self.values is None:
                colour = _PASTELS[i % len(_PASTELS)]
            elif self.values[i] is None:
                colour = "#eeeeee"
            else:
                colour = to_hex(colormaps["Reds"](0.85 * self.values[i] / scale))
                ink = "white" if self.values[i] > 0.6 * scale else "black"
                hint += f", {self.values[i]:.2f} {self.unit}".rstrip()
            text = html.escape(visible(piece.text))
            spans.append(
                f'<span title="{hint}" style="background:{colour};color:{ink};border:1px solid #999;'
                f'border-radius:3px;padding:0 1px;margin:0 1px;white-space:pre">{text}</span>'
            )
        caption = ""
        if self.values is not None:
            shown = [v for v in self.values if v is not None]
            mean = sum(shown) / max(len(shown), 1)
            caption = f"<br><small>mean {mean:.3f} {self.unit} over {len(shown)} tokens; darker = higher</small>"
        return f'<div style="line-height:1.9;font-family:monospace">{"".join(spans)}{caption}</div>'

    def __str__(self) -> str:
        if self.values is None:
            return "|" + "|".join(visible(p.text) for p in self.pieces) + "|"
        values = ("" if v is None else f"{v:8.3f}" for v in self.values)
        return "\n".join(f"{v:>8}  {visible(p.text)!r}" for p, v in zip(self.pieces, values, strict=True))

    def __repr__(self) -> str:
        return str(self)


def show_tokens(tokenizer: Tokenizer, text: str) -> TokenText:
    """`text`'s tokens as coloured boxes (special tokens included).

    show_tokens(tokenizer, "once upon a time<|endoftext|>")  # the last expression of a cell: coloured boxes
    print(show_tokens(tokenizer, "once upon a time"))  # plain: |once|·upon|·a|·time|
    """
    return TokenText(token_pieces(tokenizer, text))


def show_losses(model: TransformerLM, tokenizer: Tokenizer, text: str) -> TokenText:
    """`text`'s tokens coloured by their loss under `model` (the first token has none); the text must fit the context.

    shown = show_losses(model, tokenizer, "once upon a time, there was a little cat.")
    shown  # darker = more surprising; shown.values holds the numbers
    """
    pieces = token_pieces(tokenizer, text)
    device = next(model.parameters()).device
    ids = torch.tensor([p.id for p in pieces], device=device)
    return TokenText(pieces, [None, *token_losses(model, ids).tolist()], unit="nats")


# --------------------------------------------------------------------------------------------------------------------
# Tables


class Table:
    """Rows under a header: an HTML table in a notebook, aligned columns as plain text.

    table = Table(["rank", "merge"], [[0, "t h"], [1, "th e"]])
    print(table)  # or leave `table` last in a cell for HTML
    """

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence]):
        self.columns = list(columns)
        self.rows = [list(map(str, row)) for row in rows]
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row!r} has {len(row)} cells; the table has {len(self.columns)} columns")

    def _repr_html_(self) -> str:
        cell = 'style="text-align:left;font-family:monospace;white-space:pre"'
        head = "".join(f"<th {cell}>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td {cell}>{html.escape(v)}</td>" for v in row) + "</tr>" for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        widths = [max(len(r[i]) for r in [self.columns, *self.rows]) for i in range(len(self.columns))]
        line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()  # noqa: E731
        return "\n".join([line(self.columns), line(["-" * w for w in widths]), *map(line, self.rows)])

    def __repr__(self) -> str:
        return str(self)


def _show(token: bytes) -> str:
    return visible(token.decode("utf-8", errors="replace"))


def merges_table(tokenizer: Tokenizer, count: int = 20) -> Table:
    """The first `count` merges a BPE tokenizer learned, in order.

    table = merges_table(tokenizer, 10)
    table.rows[0]  # ['0', '·', 't', '·t'] for a tokenizer whose first merge is " " + "t"
    """
    rows = [[rank, _show(a), _show(b), _show(a + b)] for rank, (a, b) in enumerate(tokenizer.merges[:count])]
    return Table(["rank", "left", "right", "merged"], rows)


def merge_trace_table(trace: MergeTrace) -> Table:
    """A merge trace (introspect.merge_trace) step by step: which merge fired and the parts after it.

    trace = merge_trace(tokenizer, " extraordinary")
    merge_trace_table(trace)
    """
    rows = [["", "", "", " | ".join(map(_show, trace.start))]]
    rows += [[i + 1, s.rank, f"{_show(s.pair[0])} + {_show(s.pair[1])}", " | ".join(map(_show, s.parts))]
             for i, s in enumerate(trace.steps)]  # fmt: skip
    rows.append(["ids", "", "", " ".join(map(str, trace.ids))])
    return Table(["step", "rank", "merge", "parts"], rows)


# --------------------------------------------------------------------------------------------------------------------
# Figures


def attention_figure(
    weights: Tensor,
    labels: Sequence[str],
    key_labels: Sequence[str] | None = None,
    titles: Callable[[int, int], str] | None = None,
    size: float = 2.6,
) -> Figure:
    """Attention maps as a grid of heatmaps, one row per layer and one column per head (row = query, column = key).

    fig = attention_figure(attention_weights(model, ids), token_labels(tokenizer, ids))
    fig.savefig("attention.png")
    """
    weights = weights.detach().float().cpu()
    if weights.dim() == 2:
        weights = weights[None, None]
    elif weights.dim() == 3:
        weights = weights[None]
    if weights.dim() != 4:
        raise ValueError(f"weights has shape {tuple(weights.shape)}; expected (L, H, Tq, Tk), (H, Tq, Tk) or (Tq, Tk)")
    layers, heads, tq, tk = weights.shape
    key_labels = labels[-tk:] if key_labels is None else key_labels
    if len(labels) < tq or len(key_labels) != tk:
        raise ValueError(f"need {tq} query labels and {tk} key labels, got {len(labels)} and {len(key_labels)}")
    fig = Figure(figsize=(size * heads + 1, size * layers + 0.5), layout="constrained")
    axes = fig.subplots(layers, heads, squeeze=False)
    ticks = max(tq, tk) <= 40
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            image = ax.imshow(weights[layer, head].numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(titles(layer, head) if titles else f"layer {layer} head {head}", fontsize=9)
            ax.set_xticks(range(tk) if ticks else [], key_labels if ticks else [], rotation=90, fontsize=7)
            ax.set_yticks(range(tq) if ticks else [], labels[-tq:] if ticks else [], fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return fig


def logit_lens_figure(lens: Tensor, tokenizer: Tokenizer, labels: Sequence[str], size: float = 0.9) -> Figure:
    """The logit lens (introspect.logit_lens, (L+1, T, V)) as a table: each layer's most likely next token at each
    position, coloured by its probability.

    fig = logit_lens_figure(logit_lens(model, ids), tokenizer, token_labels(tokenizer, ids))
    fig.savefig("lens.png")
    """
    if lens.dim() != 3:
        raise ValueError(f"lens has shape {tuple(lens.shape)}; expected (L+1, T, V) (one sequence)")
    rows, positions, _ = lens.shape
    if len(labels) != positions:
        raise ValueError(f"need {positions} labels (one per position), got {len(labels)}")
    probs = lens.detach().float().softmax(dim=-1).cpu()
    top_p, top_id = probs.max(dim=-1)  # (L+1, T)
    fig = Figure(figsize=(size * positions + 1.5, 0.45 * rows + 1.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(top_p.numpy(), vmin=0.0, vmax=1.0, cmap="Blues", aspect="auto")
    for r in range(rows):
        for t in range(positions):
            colour = "white" if top_p[r, t] > 0.6 else "black"
            text = visible(tokenizer.decode([int(top_id[r, t])]))[:8]
            ax.text(t, r, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(positions), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(rows), ["embed", *(f"layer {i}" for i in range(rows - 1))], fontsize=7)
    ax.set_xlabel("input token (each cell: the predicted next token)")
    fig.colorbar(image, ax=ax, label="probability of the top token")
    return fig
