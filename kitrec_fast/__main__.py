# vLLM's engine runs in spawned processes, which re-run the parent's main module before anything
# else and so import kitrec_fast, whose import hides the known upstream lines there too
# (kitrec_fast/quiet.py). multiprocessing re-runs a main module it knows by path, but never a
# package's ``__main__`` it knows by name (``python -m kitrec_fast``): without a spec, this module
# is known by its path, as the ``kitrec-fast`` console script is.
__spec__ = None

from kitrec_fast.cli import main  # noqa: E402

# Guarded: the spawned processes run this module again.
if __name__ == "__main__":
    raise SystemExit(main())
