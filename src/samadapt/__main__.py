"""``python -m samadapt``: the command line (also what ``torchrun -m samadapt train ...`` runs)."""

from samadapt.cli import app

app(prog_name="samadapt")
