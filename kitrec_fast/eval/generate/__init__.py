"""``kitrec-fast eval generate``: greedy generations for a test set, resumable, one JSONL line per row.

Usage::

    kitrec-fast eval generate --run RUN_DIR --dataset Younggooo/kitrec-test-seta --output OUT
    kitrec-fast eval generate --model Qwen/Qwen3-14B --adapter RUN_DIR/adapter --dataset D --output OUT
    kitrec-fast eval score --predictions OUT/predictions.jsonl --output OUT/score

Prompts: the row's prompt (``input`` for val/test rows, see ``kitrec_fast.data.schema``) rendered by
the training code (``render_generation_prompt``: Qwen3 chat template + ``<|im_start|>assistant\\n``).

Candidates: every candidate of the test prompt is kept (100 in the KitREC test sets), as the
paper evaluates. ``--max-candidates K`` asks for a cut: each prompt is cut with the training
truncation (``truncate_prompt``: the ground truth always kept, negatives chosen by the same
per-row digest with the run's ``data.split_seed``, header count rewritten), so the model sees
prompts shaped like its 50-candidate training prompts. The cut is recorded in
``generate_config.json``, and the metrics are then over K candidates: not comparable with
100-candidate numbers (``eval score`` reports the count per row, ``eval compare`` refuses to mix
them). ``--max-prompt-tokens N`` additionally cuts history (oldest first) and then candidates
(down to ``data.min_candidates``) until the generation prompt fits N tokens. ``candidate_ids`` in
the output are the candidates of the prompt the model actually saw.

Prompt budget: before the model loads, every pending row is read, rendered and tokenized once
(streaming, window by window) into a ``PromptStore`` (ids in an unnamed temporary file in the
output folder, metadata in memory), and the longest prompt is measured; the engine is sized for
it plus ``--max-new-tokens`` (the run's training ``data.max_length`` plays no part). That pass also
stops on a bad row before minutes of model loading. ``--prepare-only`` stops after it.

Decoding: greedy, up to ``--max-new-tokens`` (2,048) new tokens, stopping at ``<|im_end|>`` (and
``<|endoftext|>``, which is also the pad token and never trained as output). Batches of
``--batch-size`` rows are left padded with ``<|endoftext|>``. All pending rows are generated in
order of prompt length (longest first, ``--no-sort``: dataset order) so batches carry little
padding and an out-of-memory error shows up in the first minutes, not hours in.

Output directory::

    OUT/predictions.jsonl    one line per row (the contract in kitrec_fast.eval.score), plus
                             ``finished`` (stopped at <|im_end|>), ``prompt_tokens``, ``batch_size``
    OUT/generate_config.json what produced it: model, adapter, dataset, decoding, truncation
    OUT/.generate.lock       held (flock) while a process writes, so two writers cannot interleave;
                             removed when the command ends

Resume: each batch is written, flushed and fsync'ed before the next starts. A rerun reads the
row ids already present (a torn last line from a kill mid-write is cut off the file), skips them
and appends the rest, so every row appears exactly once. ``row_id`` is the row's index in the
loaded split, so it does not depend on ``--limit``/``--user-type``: a rerun with a larger
``--limit`` extends the file. A rerun whose model, adapter, dataset, decoding or truncation
differ from ``generate_config.json`` is refused (mixing them in one file would be meaningless).
``gen_seconds`` is the wall time of the row's batch (its latency, not its share of throughput).

Engines: ``--engine auto`` (default): vllm where vLLM is importable and a GPU is present, else hf
(said on one line). ``--engine hf`` runs ``model.generate`` on the training backend's model
(``load_for_inference``: Unsloth's fast inference mode on the fast path). ``--engine vllm`` runs
vLLM on the unquantized base (bf16 on a GPU, fp32 on CPU) with the adapter as a LoRA request;
``generate_config.json`` records engine, vLLM version, base precision and the base the adapter was
trained on. Several runs of one base (``--run A B ...``) share one vLLM engine (one LoRA request
each) and write to ``OUTPUT/<run name>/``; with hf they run one after another, each in its own
process.

Testing hook: ``KITREC_FAST_GENERATE_PAUSE_S=x`` sleeps x seconds after each written batch, so an
interruption test has a deterministic window in which the file is partly written.
"""

from kitrec_fast.eval.generate.cli import add_generate_parser
from kitrec_fast.eval.generate.command import PAUSE_ENV, prediction_record, run_generate
from kitrec_fast.eval.generate.engines import Generated, HFEngine, VLLMEngine, choose_engine, cut_at_stop
from kitrec_fast.eval.generate.options import (CONFIG_FILE, PREDICTIONS_FILE, GenerateError, GenerateOptions,
                                               resolve_config)
from kitrec_fast.eval.generate.resume import LOCK_FILE, check_fingerprint, output_lock, read_done
from kitrec_fast.eval.generate.rows import EvalRow, PromptStore, RowBuilder, iter_selected, select_rows

__all__ = ["CONFIG_FILE", "LOCK_FILE", "PAUSE_ENV", "PREDICTIONS_FILE", "EvalRow", "GenerateError",
           "GenerateOptions", "Generated", "HFEngine", "PromptStore", "RowBuilder", "VLLMEngine", "add_generate_parser",
           "check_fingerprint", "choose_engine", "cut_at_stop", "iter_selected", "output_lock", "prediction_record",
           "read_done", "resolve_config", "run_generate", "select_rows"]
