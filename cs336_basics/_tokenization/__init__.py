"""The BPE trainer's and tokenizer's engines (C kernels, numpy tables, merge engines) and their plain references."""
