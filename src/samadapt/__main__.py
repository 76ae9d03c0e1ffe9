"""``python -m samadapt``: the command line (also what ``torchrun -m samadapt train ...`` runs)."""

from samadapt.cli import app

if __name__ == "__main__":  # not when a worker process (multiprocessing's spawn) imports this as __mp_main__
    app(prog_name="samadapt")
