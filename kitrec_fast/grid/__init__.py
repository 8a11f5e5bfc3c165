"""``kitrec-fast grid``: the paper's grid of recipes x sets x backends on a Ray cluster.

Every training, generation and scoring job runs as the project's own command line in a fresh
process (importing unsloth patches a process for good, and the peft path refuses a patched one);
Ray only places those processes on machines and notices when one dies.

Modules: ``spec`` (what a grid is and the commands of its jobs), ``state`` (the JSON state file a
second terminal reads), ``cluster`` (joining or starting Ray, checks before any job), ``worker``
(the Ray task that runs one command), ``runner`` (the scheduling loop: stages, retries,
progress), ``report`` (grid_report.json/.md/.png), ``cli``.
"""
