from kitrec_fast.cli import main

# Guarded: vLLM starts its engine in spawned processes, which import this module again.
if __name__ == "__main__":
    raise SystemExit(main())
