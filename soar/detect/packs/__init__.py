"""Built-in rule packs (YAML package data), loaded by soar.detect.rules.builtin_packs."""
