"""Word models of the detection engine (JSON, made by bench/train_lexical.py)."""
