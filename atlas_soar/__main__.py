"""`python -m atlas_soar ...`: the `soar` command."""

from atlas_soar.cli import main

main()
