#!/usr/bin/env bash
# Make the token file that `gpu_check.sh --time-to-loss` trains on: a 10,000-token BPE trained on a corpus, then
# the corpus tokenized (uint16, with its .json sidecar). Output in out/gpu-data/ (git-ignored; about 2 bytes per
# token: the 42 MB English benchmark corpus gives ~20 MB, well under the 64 MB that travels to a GPU machine).
#
#   bash benchmarks/gpu_data.sh path/to/english_mix_bench.txt     # or the TinyStories train head, or any text
set -eu
cd "$(dirname "$0")/.."
CORPUS="${1:?usage: bash benchmarks/gpu_data.sh CORPUS.txt}"
DIR=out/gpu-data
RUN="${CS336:-uv run cs336-basics}"
mkdir -p "$DIR"
$RUN train-bpe "$CORPUS" --vocab-size 10000 --special-token '<|endoftext|>' --out "$DIR/tokenizer" --workers 2
$RUN tokenize "$CORPUS" --tokenizer "$DIR/tokenizer" --out "$DIR/train.bin" --workers 2
ls -l "$DIR"
