"""Export at scale: time and peak memory of `export_study` for 10 000 participants / 1 000 000
messages, against a study ten times smaller, in CSV and Parquet.

Run from the repository root (about 10 minutes on a 2-core machine, most of it generating rows):

    .venv/bin/python benchmarks/export_scale.py
    .venv/bin/python benchmarks/export_scale.py --participants 1000 10000 --turns 50 --formats csv

It needs PostgreSQL: DATABASE_URL names the server (default postgres://postgres@127.0.0.1:5432).
It always uses its own database, `collabllm_bench_export` on that server (created if missing, then
migrated), and never touches another; generated studies are reused between runs (--regenerate
drops the database first). Rows are generated inside PostgreSQL (INSERT ... SELECT over
generate_series): per participant `--turns` turns (a user message of ~120 characters and a
completed assistant reply of ~600 characters with token counts), a rating every 3 turns, a final
survey, 3 intent answers and 2 events per turn. Each export runs in a fresh interpreter
(`--child`), which reports its wall time, its peak RSS (getrusage ru_maxrss) and the RSS it had
before the export started (Django, pyarrow and the study loaded).
Results: benchmarks/results/export_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.benchdb import database_prepare, database_url  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH_DB = "collabllm_bench_export"


def bench_url() -> str:
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return database_url(server, BENCH_DB)


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="bench-" + "x" * 50,
        DATABASE_URL=bench_url(),
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"),
        LOG_LEVEL="WARNING",
    )
    env.pop("DJANGO_SECRET_KEY_FILE", None)
    return env


def prepare_database(*, fresh: bool = False) -> None:
    """Create the benchmark database if it is missing (drop it first when `fresh`), migrate it."""
    database_prepare(bench_url(), bench_env(), fresh=fresh)


def setup_django() -> None:
    os.environ.update(bench_env())
    import django

    django.setup()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# Everything below runs inside PostgreSQL: %(study)s is the study id, %(n)s participants, %(turns)s.
GENERATE = [
    """
    INSERT INTO studies_participant (
        public_id, study_id, external_id, recruiting_source, recruiting_params, config_version,
        attempts, condition_id, document_type, task_id, allocation, status, outcome, is_pilot,
        is_preview, comprehension_failures, attention_failures, exclusion_reason, entered_at,
        consented_at, briefed_at, chat_started_at, chat_finished_at, completed_at, last_active_at,
        is_visible, active_seconds)
    SELECT gen_random_uuid(), %(study)s, 'prolific:bench-' || g, 'prolific', '{}', 1, '[]',
        c.id, t.document_type, t.id,
        jsonb_build_object('arm', jsonb_build_object('choice', c.key, 'stratum', 'all')),
        'completed', 'completed', false, false, 0, 0, '', now() - interval '2 hours',
        now() - interval '2 hours', now() - interval '115 minutes', now() - interval '110 minutes',
        now() - interval '70 minutes', now() - interval '60 minutes', now() - interval '60 minutes',
        true, 1800 + (g %% 600)
    FROM generate_series(1, %(n)s) g
    JOIN LATERAL (SELECT id, key FROM studies_condition WHERE study_id = %(study)s
                  ORDER BY id OFFSET (g %% 3) LIMIT 1) c ON true
    JOIN LATERAL (SELECT id, document_type FROM studies_task WHERE study_id = %(study)s
                  ORDER BY id OFFSET (g %% 6) LIMIT 1) t ON true
    """,
    """
    INSERT INTO studies_message (
        participant_id, turn_index, role, attempt, content, status, error_kind, error_detail,
        model, endpoint_url, prompt_ref, generation_params, prompt_tokens, completion_tokens,
        usage_source, time_to_first_token, duration, finish_reason, idempotency_key, created_at,
        updated_at, completed_at)
    SELECT p.id, t, r.role, 1,
        CASE WHEN r.role = 'user' THEN left(repeat(md5(p.id || '-' || t) || ' ', 4), 120)
             ELSE left(repeat(md5(t || '-' || p.id) || ' words ', 20), 600) END,
        'complete', '', '', CASE WHEN r.role = 'assistant' THEN 'smollm2-135m' ELSE '' END, '',
        CASE WHEN r.role = 'assistant' THEN 'collabllm@1#abc123' ELSE '' END,
        CASE WHEN r.role = 'assistant' THEN '{"max_tokens": 256, "temperature": 0.7}'::jsonb
             ELSE '{}'::jsonb END,
        CASE WHEN r.role = 'assistant' THEN 200 + (t - 1) * 180 END,
        CASE WHEN r.role = 'assistant' THEN 150 END, 'stream',
        CASE WHEN r.role = 'assistant' THEN 0.2 END, CASE WHEN r.role = 'assistant' THEN 3.5 END,
        CASE WHEN r.role = 'assistant' THEN 'stop' ELSE '' END,
        CASE WHEN r.role = 'user' THEN gen_random_uuid() END,
        p.chat_started_at + t * interval '40 seconds',
        p.chat_started_at + t * interval '40 seconds',
        p.chat_started_at + t * interval '40 seconds'
    FROM studies_participant p CROSS JOIN generate_series(1, %(turns)s) t
    CROSS JOIN (VALUES (1, 'user'), (2, 'assistant')) r(o, role)
    WHERE p.study_id = %(study)s
    ORDER BY p.id, t, r.o
    """,
    """
    INSERT INTO studies_turnrating (participant_id, after_turn, score, question_version, created_at)
    SELECT p.id, k, 1 + ((p.id + k) %% 10), 'v1', p.chat_started_at + k * interval '41 seconds'
    FROM studies_participant p CROSS JOIN generate_series(3, %(turns)s, 3) k
    WHERE p.study_id = %(study)s
    """,
    """
    INSERT INTO studies_finalsurvey (participant_id, document_text, document_quality,
        overall_interaction, strengths, weaknesses, extra_answers, created_at)
    SELECT p.id, repeat('The final document. ', 50), 1 + p.id %% 10, 1 + (p.id / 7) %% 10,
        'Helpful questions.', 'Sometimes slow.', '{}', p.completed_at
    FROM studies_participant p WHERE p.study_id = %(study)s
    """,
    """
    INSERT INTO studies_intentanswer (participant_id, question_index, question, answer, created_at)
    SELECT p.id, q, 'Question ' || q || '?', 'An answer of a participant.', p.briefed_at
    FROM studies_participant p CROSS JOIN generate_series(0, 2) q WHERE p.study_id = %(study)s
    """,
    """
    INSERT INTO studies_event (study_id, participant_id, kind, payload, created_at)
    SELECT %(study)s, p.id, e.kind, jsonb_build_object('turn', t),
        p.chat_started_at + t * interval '40 seconds'
    FROM studies_participant p CROSS JOIN generate_series(1, %(turns)s) t
    CROSS JOIN (VALUES ('study.turn.started'), ('study.turn.completed')) e(kind)
    WHERE p.study_id = %(study)s
    """,
]


def generate(participants: int, turns: int) -> dict[str, Any]:
    """The study `export-<participants>x<turns>`, generated unless it is already there."""
    from django.db import connection

    from studies.models import Message, Participant, Study
    from tests.factories import three_arm_study

    slug = f"export-{participants}x{turns}"
    study = Study.objects.filter(slug=slug).first()
    seconds = 0.0
    if study is None:
        study = three_arm_study(slug=slug, rating_every=3, min_turns=turns)
        started = time.perf_counter()
        params = {"study": study.pk, "n": participants, "turns": turns}
        with connection.cursor() as cursor:
            for statement in GENERATE:
                cursor.execute(statement, params)
            cursor.execute("ANALYZE")
        seconds = time.perf_counter() - started
    messages = Message.objects.filter(participant__study=study).count()
    return {
        "slug": slug,
        "participants": Participant.objects.filter(study=study).count(),
        "messages": messages,
        "generate_seconds": round(seconds, 1),
    }


def child(slug: str, fmt: str, out: Path) -> None:
    """One export in this interpreter; prints a JSON line with time and memory."""
    setup_django()
    import pyarrow.parquet  # noqa: F401  (loaded before the baseline: it is in the baseline)

    from studies.models import Study
    from studies.services.exports import export_study

    study = Study.objects.get(slug=slug)
    before = rss_kib()
    curve: dict[int, float] = {}  # RSS (MiB) when the export passed each quarter of its rows

    def progress(fraction: float, step: str) -> None:
        quarter = int(fraction * 4) * 25
        if quarter and quarter not in curve:
            curve[quarter] = round(rss_kib() / 1024, 1)

    started = time.perf_counter()
    result = export_study(study, out, fmt=fmt, progress=progress)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sizes = {p.name: p.stat().st_size for p in result.files}
    print(json.dumps({
        "seconds": round(seconds, 2), "rss_before_mib": round(before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1), "rows": result.row_counts,
        "bytes": sum(sizes.values()), "files": sizes, "rss_by_progress_mib": curve,
    }))  # fmt: skip


def run_child(slug: str, fmt: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="export-scale-")) / "out"
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", slug, fmt, str(out)],
            cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"export failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def write_results(data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export_scale.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# export_scale",
        "",
        f"{data['when']} on {data['machine']}; PostgreSQL on the same machine. "
        f"`export_study`, one fresh interpreter per export; batches of {data['batch_rows']} rows.",
        "",
        "| study | participants | messages | format | seconds | rows/s | RSS before (MiB) "
        "| peak RSS (MiB) | peak - before (MiB) | RSS at 25/50/75/100 % of rows (MiB) "
        "| output (MiB) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in data["runs"]:
        rows = sum(r["rows"].values())
        lines.append(
            f"| {r['slug']} | {r['participants']} | {r['messages']} | {r['format']} "
            f"| {r['seconds']:.1f} | {rows / r['seconds']:,.0f} | {r['rss_before_mib']:.0f} "
            f"| {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['rss_before_mib']:.0f} "
            f"| {' / '.join(f'{v:.0f}' for v in r['rss_by_progress_mib'].values())} "
            f"| {r['bytes'] / 2**20:.0f} |"
        )
    lines += ["", "Generated studies (rows made inside PostgreSQL):", ""]
    lines += [
        f"- {s['slug']}: {s['participants']} participants, {s['messages']} messages"
        + (f", generated in {s['generate_seconds']} s" if s["generate_seconds"] else " (reused)")
        for s in data["studies"]
    ]
    (RESULTS / "export_scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--turns", type=int, default=50, help="Turns per participant (2 msgs).")
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"])
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("SLUG", "FORMAT", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return
    prepare_database(fresh=args.regenerate)
    setup_django()
    from studies.services.exports import BATCH_ROWS

    studies = [generate(n, args.turns) for n in args.participants]
    runs = []
    for study in studies:
        for fmt in args.formats:
            result = run_child(study["slug"], fmt)
            runs.append({**study, "format": fmt, **result})
            print(json.dumps(runs[-1]), flush=True)
    data = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.python_version()})",
        "batch_rows": BATCH_ROWS,
        "studies": studies,
        "runs": runs,
    }
    if not args.no_write:
        write_results(data)


if __name__ == "__main__":
    main()
