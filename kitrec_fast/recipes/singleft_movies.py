"""python -m kitrec_fast.recipes.singleft_movies [--set B] [--backend peft] [--smoke] [--dry-run] [KEY=VALUE ...]"""

from kitrec_fast.recipes._main import main

if __name__ == "__main__":
    raise SystemExit(main("singleft_movies"))
