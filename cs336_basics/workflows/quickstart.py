"""`cs336-basics quickstart`: the whole pipeline in one command, on a text that needs no download.

    cs336-basics quickstart                      # built-in corpus, a few minutes on a laptop CPU
    cs336-basics quickstart --text stories.txt --out runs/qs --steps 2000 --vocab-size 4096

Steps, all into `--out`: (1) the corpus (the built-in one is written to corpus.txt) is split by documents
(<|endoftext|>) into train.txt and val.txt (last `--val-fraction` of the documents); (2) a byte-level BPE tokenizer
is trained on train.txt (tokenizer/); (3) both splits are tokenized (train.bin, val.bin); (4) a small model is
trained for half the steps, stopped as if preempted, and resumed from its checkpoint to the end (run/); (5) the
final checkpoint is evaluated on all of val.bin; (6) a sample is generated from `--prompt`.

The built-in corpus is generated procedurally (seeded, so always the same): short stories in simple English, in
the style of TinyStories, written for this package from templates and word lists.
"""

import random
import time
from pathlib import Path

from cs336_basics.fileio import atomic_write_json

EOT = "<|endoftext|>"

# --------------------------------------------------------------------------------------------------------------------
# The built-in corpus

_NAMES = [
    "lily", "tom", "mia", "ben", "sue", "max", "anna", "sam", "lucy", "tim", "zoe", "jack", "emma", "leo", "ruby",
    "finn", "ella", "noah", "rosa", "omar",
]  # fmt: skip
_ANIMALS = ["cat", "dog", "bunny", "bird", "frog", "duck", "bear", "fox", "mouse", "puppy", "kitten", "owl"]
_PLACES = ["small house", "big farm", "quiet town", "green forest", "sunny village", "little boat", "tall tree"]
_FAMILY = ["mom", "dad", "grandma", "grandpa", "big sister", "little brother"]
_LIKES = [
    "play in the park", "draw pictures", "sing songs", "build towers with blocks", "run in the grass",
    "read books", "splash in puddles", "pick flowers", "look at the stars", "bake cookies",
]  # fmt: skip
_ADJ = ["shiny", "red", "tiny", "soft", "strange", "blue", "round", "golden", "old", "pretty"]
_OBJECTS = ["ball", "box", "key", "hat", "stone", "shell", "kite", "cup", "feather", "map", "bell", "toy car"]
_SPOTS = ["big tree", "old fence", "little pond", "garden", "river", "hill", "school", "road"]
_FEELINGS = ["happy", "sad", "scared", "excited", "surprised", "curious", "tired", "proud"]
_PROBLEMS = [
    ("the {obj} fell into the water", "used a long stick to get it back"),
    ("the wind took the {obj} up into a tree", "climbed up slowly and got it down"),
    ("the {obj} was broken", "fixed it with some tape and glue"),
    ("a big dog ran away with the {obj}", "chased the dog and asked for it nicely"),
    ("it started to rain and the {obj} got wet", "dried it with a warm towel"),
    ("the {obj} got lost in the tall grass", "looked for it together until they found it"),
]
_MORALS = [
    "sharing makes everyone happy", "it is good to help your friends", "being kind is always the best",
    "you should never give up", "working together makes things easy", "it is fun to try new things",
]  # fmt: skip


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def builtin_corpus(num_stories: int = 2500, seed: int = 0) -> str:
    """`num_stories` short, simple-English stories, each followed by <|endoftext|> and a newline; deterministic.

    Example (seed 0, first words): "once upon a time, there was a little ..."
    """
    if num_stories <= 0:
        raise ValueError(f"num_stories={num_stories} must be positive")
    rng = random.Random(seed)
    stories = []
    for _ in range(num_stories):
        name, friend = rng.sample(_NAMES, 2)
        animal, friend_animal = rng.sample(_ANIMALS, 2)
        he = rng.choice(["he", "she"])
        his = "his" if he == "he" else "her"
        obj, adj = rng.choice(_OBJECTS), rng.choice(_ADJ)
        problem, fix = rng.choice(_PROBLEMS)
        opening = rng.choice(["once upon a time, there was", "one day, there was", "there once was"])
        sentences = [
            f"{opening} a little {animal} named {name}.",
            f"{name} lived in a {rng.choice(_PLACES)} with {his} {rng.choice(_FAMILY)}.",
            f"every day, {name} liked to {rng.choice(_LIKES)}.",
            f"one day, {name} found {_a(adj)} {adj} {obj} near the {rng.choice(_SPOTS)}.",
            f'"look at this {obj}!" said {name}. {he} was very {rng.choice(_FEELINGS)}.',
            f"{name} went to show the {obj} to {his} friend {friend}, the {friend_animal}.",
        ]
        if rng.random() < 0.5:
            sentences.append(f'{friend} said, "wow, what {_a(adj)} {adj} {obj}! can i play with it too?"')
            sentences.append(f'"yes, we can play together," said {name} with a big smile.')
        sentences.append(f"but then, {problem.format(obj=obj)}.")
        sentences.append(f"{name} felt {rng.choice(['sad', 'worried', 'upset'])}, but {friend} had an idea.")
        sentences.append(f"together, they {fix}.")
        sentences.append(f"{name} and {friend} were happy again. they learned that {rng.choice(_MORALS)}.")
        if rng.random() < 0.4:
            sentences.append(f"that night, {name} went to sleep with the {obj} close by.")
        stories.append(" ".join(sentences))
    return "".join(f"{story}\n{EOT}\n" for story in stories)


def split_documents(text: str, val_fraction: float) -> tuple[str, str]:
    """Split a corpus by <|endoftext|> into (train, val): the last `val_fraction` of the documents go to val.

    Each part keeps the separators, so its documents still end with <|endoftext|>.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    if EOT not in text:  # plain text: split by lines instead
        lines = text.splitlines(keepends=True)
        if len(lines) < 2:
            raise ValueError("the corpus has fewer than 2 lines and no <|endoftext|>; nothing to split")
        n_val = min(len(lines) - 1, max(1, round(len(lines) * val_fraction)))
        return "".join(lines[:-n_val]), "".join(lines[-n_val:])
    docs = [d for d in text.split(EOT) if d.strip()]
    if len(docs) < 2:
        raise ValueError(f"the corpus has {len(docs)} document(s) separated by {EOT}; the split needs at least 2")
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    join = lambda part: "".join(d.strip("\n") + "\n" + EOT + "\n" for d in part)  # noqa: E731
    return join(docs[:-n_val]), join(docs[-n_val:])


# --------------------------------------------------------------------------------------------------------------------
# The pipeline


def run_quickstart(
    out: str | Path,
    text_path: str | Path | None = None,
    vocab_size: int = 1024,
    steps: int = 200,
    batch_size: int = 32,
    context_length: int = 128,
    d_model: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    d_ff: int = 384,
    lr: float = 3e-3,
    val_fraction: float = 0.1,
    eval_interval: int = 50,
    prompt: str = "once upon a time",
    max_new_tokens: int = 120,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    device: str = "auto",
    num_workers: int = 1,
    num_stories: int = 2500,
    progress: bool = False,
    log=lambda message: None,
) -> dict:
    """Corpus -> BPE -> token files -> train (stopped halfway and resumed) -> eval -> sample; returns a summary.

    `log(message)` receives one line per stage (the CLI prints them). Raises FileExistsError when `out` is a
    non-empty directory, and ValueError/FileNotFoundError for any other bad setting, before any work.
    """
    out = Path(out)
    _check_settings(
        out,
        text_path,
        steps,
        device,
        temperature,
        top_p,
        vocab_size,
        context_length,
        d_model,
        num_layers,
        num_heads,
        d_ff,
    )
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    source = _write_splits(out, text_path, val_fraction, num_stories, seed, log)
    vocab = _train_tokenizer(out, vocab_size, num_workers, progress, timings, log)
    n_tokens = _write_token_files(out, num_workers, timings, log)
    model_settings = dict(
        context_length=context_length,
        d_model=d_model,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        batch_size=batch_size,
        lr=lr,
    )
    config = _train_config(out, len(vocab), steps, eval_interval, seed, device, progress, **model_settings)
    summary = _train_preempted_and_resumed(config, timings, log)

    evaluation, sample = _evaluate_and_sample(
        out, summary["checkpoint"], device, prompt, max_new_tokens, temperature, top_p, seed, log
    )
    timings["total_s"] = time.perf_counter() - t0
    result = {
        "out": str(out),
        "source": source,
        "vocab_size": len(vocab),
        "tokens": n_tokens,
        "train": summary,
        "eval": evaluation,
        "sample": sample,
        "timings": timings,
    }
    atomic_write_json(out / "quickstart.json", result)
    return result


def _check_settings(out: Path, text_path, steps: int, device: str, temperature: float, top_p: float, *model) -> None:
    """Every check that can run before any work (`model`: vocab_size, context_length, d_model, num_layers,
    num_heads, d_ff)."""
    from cs336_basics.config import ModelConfig
    from cs336_basics.generation import check_sampling_args
    from cs336_basics.runtime import resolve_device

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"out={str(out)!r} exists and is not empty; choose a new --out or delete it")
    if text_path is not None and not Path(text_path).is_file():
        raise FileNotFoundError(f"text file {str(text_path)!r} does not exist")
    if steps < 2:
        raise ValueError(f"steps={steps} must be >= 2 (the run stops halfway and resumes)")
    resolve_device(device)
    names = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff")
    ModelConfig(**dict(zip(names, model, strict=True)))
    check_sampling_args(temperature, None, top_p)


def _write_splits(out: Path, text_path, val_fraction: float, num_stories: int, seed: int, log) -> str:
    """1) the corpus (built-in or `text_path`) split by documents into train.txt and val.txt; returns its source."""
    if text_path is None:
        text = builtin_corpus(num_stories, seed=seed)
        (out / "corpus.txt").write_text(text, encoding="utf-8")
        source = "built-in procedural stories"
    else:
        text = Path(text_path).read_text(encoding="utf-8")
        source = str(text_path)
    train_text, val_text = split_documents(text, val_fraction)
    (out / "train.txt").write_text(train_text, encoding="utf-8")
    (out / "val.txt").write_text(val_text, encoding="utf-8")
    log(f"[1/6] corpus: {source}, {len(text):,} characters -> train.txt {len(train_text):,}, val.txt {len(val_text):,}")
    return source


def _train_tokenizer(out: Path, vocab_size: int, num_workers: int, progress: bool, timings: dict, log) -> dict:
    """2) a byte-level BPE tokenizer trained on train.txt, saved to tokenizer/; returns its vocabulary."""
    from cs336_basics.bpe import train_bpe
    from cs336_basics.tokenizer_files import save_tokenizer

    t = time.perf_counter()
    vocab, merges = train_bpe(out / "train.txt", vocab_size, [EOT], num_workers=num_workers, progress=progress)
    save_tokenizer(vocab, merges, out / "tokenizer", [EOT])
    timings["bpe_s"] = time.perf_counter() - t
    log(f"[2/6] BPE: vocab {len(vocab)} ({len(merges)} merges) in {timings['bpe_s']:.1f} s -> tokenizer/")
    return vocab


def _write_token_files(out: Path, num_workers: int, timings: dict, log) -> dict[str, int]:
    """3) train.bin and val.bin; returns their token counts."""
    from cs336_basics.workflows.tokenize import tokenize_file

    t = time.perf_counter()
    n_tokens = {}
    for split in ("train", "val"):
        meta = tokenize_file(out / f"{split}.txt", out / f"{split}.bin", out / "tokenizer", num_workers=num_workers)
        n_tokens[split] = meta["num_tokens"]
    timings["tokenize_s"] = time.perf_counter() - t
    log(f"[3/6] tokenized: train.bin {n_tokens['train']:,} tokens, val.bin {n_tokens['val']:,} tokens")
    return n_tokens


def _train_preempted_and_resumed(config, timings: dict, log) -> dict:
    """4) train to config.stop_at_step as if preempted, then resume to the end; returns the final summary."""
    from cs336_basics.train import train

    t = time.perf_counter()
    first = train(config)
    log(f"[4/6] trained to step {first['step']} (train loss {first['train_loss']:.3f}); stopped as if preempted")
    config.stop_at_step, config.resume = None, True
    summary = train(config)
    timings["train_s"] = time.perf_counter() - t
    log(
        f"      resumed from {Path(first['checkpoint']).name} to step {summary['step']}: train loss "
        f"{summary['train_loss']:.3f}, val loss {summary['val_loss']:.3f}, {summary['tokens_per_s'] or 0:,.0f} tok/s"
    )
    return summary


def _train_config(
    out: Path, vocab_size: int, steps: int, eval_interval: int, seed: int, device: str, progress: bool, **model_settings
):
    """The run's TrainConfig: warmup 5% of the steps, a checkpoint at every evaluation, a stop halfway."""
    from cs336_basics.train_config import TrainConfig

    return TrainConfig(
        train=str(out / "train.bin"),
        val=str(out / "val.bin"),
        out=str(out / "run"),
        vocab_size=vocab_size,
        steps=steps,
        warmup_steps=max(1, steps // 20),
        eval_interval=eval_interval,
        eval_batches=8,
        log_interval=max(1, min(10, steps // 40)),
        checkpoint_interval=eval_interval,
        seed=seed,
        device=device,
        progress=progress,
        stop_at_step=steps // 2,
        **model_settings,
    )


def _evaluate_and_sample(
    out: Path,
    checkpoint: str,
    device: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    log,
) -> tuple[dict, str]:
    """5) the final checkpoint's loss over all of val.bin, 6) its continuation of `prompt` (prompt included)."""
    from cs336_basics.checkpoints import load_model
    from cs336_basics.data import load_tokens
    from cs336_basics.generation import generate_text
    from cs336_basics.runtime import resolve_device
    from cs336_basics.tokenizer import Tokenizer
    from cs336_basics.workflows.eval import evaluate_tokens

    model = load_model(checkpoint, resolve_device(device))
    evaluation = evaluate_tokens(model, load_tokens(out / "val.bin"))
    log(f"[5/6] eval on all of val.bin: loss {evaluation['loss']:.3f}, perplexity {evaluation['perplexity']:.2f}")
    tokenizer = Tokenizer.from_dir(out / "tokenizer")
    continuation = generate_text(
        model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    sample = prompt + continuation
    log(f"[6/6] sample (temperature {temperature}, top-p {top_p}):\n\n{sample}\n")
    return evaluation, sample
