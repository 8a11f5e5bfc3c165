"""The benchmark machinery on CPU: FLOP counts, number formatting, the timed-step choice, the published
tables and the architecture-only model builder. The harness itself (both backends in their own
processes, identical batches, the three token counts, memory and MFU fields, the Markdown report
parsing back to the JSONL numbers, the plots) is checked on the GPU run's CPU dry run
(tests/test_gpu_plan.py::test_cpu_dry_run_leaves_what_a_gpu_run_leaves), which runs it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(REPO))

from benchmarks.training import flops, report  # noqa: E402

QWEN3_14B = {"hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40, "num_attention_heads": 40,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}


def test_flop_count_matches_hand_computation():
    shapes = flops.projection_shapes(QWEN3_14B)
    per_layer = sum(i * o for i, o in shapes.values())
    # q 5120x5120, k/v 5120x1024, o 5120x5120, gate/up/down 5120x17408
    assert per_layer == 5120 * 5120 * 2 + 5120 * 1024 * 2 + 3 * 5120 * 17408 == 330_301_440
    f = flops.step_flops(QWEN3_14B, [5120, 5120], trained_tokens=1536, lora_r=32)
    assert f["linear"] == 4 * per_layer * 10240 * 40
    assert f["attention"] == 6 * 5120 * (2 * 5120**2) * 40
    assert f["lm_head"] == 4 * 5120 * 151936 * 1536
    assert f["total"] == pytest.approx(sum(v for k, v in f.items() if k != "total"))
    # ~4 x 13.2e9 x 10,240 tokens: about 0.6 PFLOP per 2 x 5,120 step
    assert 5e14 < f["total"] < 7e14


def test_fmt_and_parse_round_trip():
    for x in (0.000123456, 0.5, 7.716, 63.76, 1234.5, 98765.4, 3, 0):
        text = report.fmt(x)
        assert report.parse_number(text) == pytest.approx(x, rel=5e-3, abs=1e-12)
    assert report.fmt(None) == "-" and report.parse_number("-") is None


def test_timed_step_count_fills_the_worker_share():
    from benchmarks.training.measure import choose_timed_steps

    # usable = left x 0.9 - 5 s; steps = usable // warm-up step, within [3, 10]
    assert choose_timed_steps(10.0, 100.0) == 8  # 85 s / 10 s
    assert choose_timed_steps(12.5, 75.0) == 5  # 62.5 s / 12.5 s: exactly five
    assert choose_timed_steps(7.0, 60.0) == 7  # 49 s / 7 s
    assert choose_timed_steps(10.0, 20.0) == 3  # 13 s holds one step: still the minimum
    assert choose_timed_steps(10.0, -4.0) == 3  # the share is already spent
    assert choose_timed_steps(1.0, 100.0) == 10  # 85 would fit: the maximum
    assert choose_timed_steps(60.0, 400.0, lo=2, hi=4) == 4  # 355 s / 60 s = 5, capped at 4
    assert choose_timed_steps(None, 100.0) == 10  # nothing measured: no reason to time fewer


def test_arch_model_builder_reduced_depth_links(tmp_path, capsys):
    from benchmarks.gpu import build_arch_model as bam
    from safetensors import safe_open

    # the default configuration is exactly Qwen3-14B's
    cfg = bam.arch_config()
    for key, value in QWEN3_14B.items():
        assert getattr(cfg, key) == value
    assert cfg.tie_word_embeddings is False and cfg.rms_norm_eps == 1e-6 and cfg.max_position_embeddings == 40960
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", None)}
    assert rope["rope_theta"] == 1_000_000.0
    n_params = sum(math.prod(s) for _, s in bam._param_specs(cfg))
    assert 14.7e9 < n_params < 14.8e9

    # mechanics on a test-sized geometry: full build, then a 1-layer model made of links to it, through the
    # command line the parity step uses (--link-from-if-built: links when a finished full build is there)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 16, "num_hidden_layers": 3, "vocab_size": 1024}
    small_args = [a for k, v in small.items() for a in ("--override", f"{k}={v}")]
    full = bam.build(tmp_path / "full", overrides=small)
    assert "df -h before" in capsys.readouterr().err  # the free space is in the build's log before any weight
    red = tmp_path / "red"
    assert bam.main(["--out", str(red), "--layers", "1", "--link-from-if-built", str(full)] + small_args) == 0
    assert "shards linked from" in capsys.readouterr().err
    index = json.loads((red / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):  # every shard, embeddings and head included: no weight written
        assert (red / shard).is_symlink() and (red / shard).resolve() == (full / shard).resolve(), shard
    assert bam.read_marker(red)["linked_from"] == str(full.resolve())
    assert bam.read_marker(red)["layers"] == 1 and bam.read_marker(red)["full_layers"] == 3
    assert "RANDOM" in bam.read_marker(red)["what"]
    index = json.loads((red / "model.safetensors.index.json").read_text())
    assert {k.split(".")[2] for k in index["weight_map"] if k.startswith("model.layers.")} == {"0"}
    assert (red / bam.layer_shard(0)).is_symlink() and not (red / bam.layer_shard(1)).exists()
    assert json.loads((red / "config.json").read_text())["num_hidden_layers"] == 1
    for build in (full, red):  # vLLM and loaders that pick the class from config.json need it named
        assert json.loads((build / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    with safe_open(str(red / bam.layer_shard(0)), "pt") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert str(q.dtype) == "torch.bfloat16" and 0.01 < float(q.float().std()) < 0.03
    # a rebuild is a no-op and the builder is deterministic per tensor; an unfinished full build (killed
    # before its index was written) is not linked to: the reduced model writes its own weights
    assert bam.build(tmp_path / "full", overrides=small) == full
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / bam.MARKER).write_text((full / bam.MARKER).read_text())
    again = tmp_path / "again"
    assert bam.main(["--out", str(again), "--layers", "1", "--link-from-if-built", str(tmp_path / "half")]
                    + small_args) == 0
    assert "holds no complete build" in capsys.readouterr().err
    assert not any(p.is_symlink() for p in again.glob("*.safetensors"))
    with safe_open(str(again / bam.layer_shard(0)), "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").equal(q)
    # transformers loads the linked reduced-depth model with every weight present
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(red), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == 1 and model.model.layers[0].self_attn.q_proj.weight.dtype.is_floating_point



H200_HEADLINE = REPO / "benchmarks/results/nvidia-h200/headline"


def test_published_tables_are_generated_from_the_committed_results(tmp_path):
    """README.md's landing table and docs/benchmarks.md's headline table are what ``report.py --publish``
    writes from the committed H200 rows (never typed by hand), and their numbers are those rows'."""
    for rel in ("README.md", "docs/benchmarks.md", "benchmarks/results/nvidia-h200/headline/results.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((REPO / rel).read_text())
    published = report.publish(tmp_path / "benchmarks/results/nvidia-h200/headline", root=tmp_path)
    for path in published:
        rel = path.relative_to(tmp_path)
        assert path.read_text() == (REPO / rel).read_text(), f"{rel}: run report.py {H200_HEADLINE} --publish"

    rows = {r["backend"]: r for r in report.load_rows(H200_HEADLINE) if r.get("kind") == "throughput"}
    readme = (REPO / "README.md").read_text()
    landing = readme.split(report.LANDING_MARKERS[0])[1].split(report.LANDING_MARKERS[1])[0]
    assert rows["unsloth"]["env"]["device_name"] in landing
    table = {rec[next(iter(rec))]: rec for rec in report.parse_table(landing, landing.splitlines()[1])}
    tok = table["tokens/s trained"]
    fast, base = (rows[b]["throughput"]["tokens_per_s_trained"] for b in ("unsloth", "peft"))
    assert report.parse_number(tok["Unsloth fast path"]) == round(fast)
    assert report.parse_number(tok["transformers + bitsandbytes + PEFT"]) == round(base)
    assert table["speed-up"]["Unsloth fast path"] == f"{fast / base:.2f}x"
    mem = table["peak memory, steady steps (reserved)"]
    assert mem["Unsloth fast path"] == f"{rows['unsloth']['memory']['steady']['peak_reserved_gib']:.1f} GiB"
    assert mem["transformers + bitsandbytes + PEFT"] == f"{rows['peft']['memory']['steady']['peak_reserved_gib']:.1f} GiB"
    # the command and the result named beside each table work from the checkout's root
    for text in (landing, (REPO / "docs/benchmarks.md").read_text()):
        generated = next(line for line in text.splitlines() if line.startswith("Generated by"))
        command = generated.split("`")[1].split()
        assert (REPO / command[1]).is_file() and (REPO / command[2] / "results.jsonl").is_file(), generated
    assert "](docs/benchmarks.md)" in landing


def test_landing_table_without_gpu_rows_says_not_measured(tmp_path):
    """CPU rows (the committed harness check) never fill the landing table with CPU figures."""
    block = "\n".join(report.landing_block(REPO / "benchmarks/results/cpu", root=REPO))
    assert block.count(report.NOT_MEASURED) == 6 and "one GPU" in block


def test_report_without_results_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "training" / "report.py"), str(tmp_path), "--publish"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error: result_dir" in proc.stderr and "Traceback" not in proc.stderr
