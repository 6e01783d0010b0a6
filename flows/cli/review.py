"""`kairos review`, `rollback` and `history`: A/B verdicts, alias moves and which version served when."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flows.cli._common import IntervalOpt, console, errors, prepare, user_actor

ModelOpt = typer.Option(..., "--model", "-m", help="Registered model name, e.g. returns-FILUSDT-1m.")


def review(
    model: str = ModelOpt,
    predlog_dir: Path | None = typer.Option(
        None, "--predlog-dir", help="Prediction log directory (default: serving's)."
    ),
    apply: bool = typer.Option(
        True, "--apply/--no-apply", help="Apply the policy's decision to the aliases."
    ),
) -> None:
    """Review champion vs challenger: outcomes, statistics, HTML report, MLflow run, promotion policy."""

    prepare()
    with errors():
        from rich.table import Table

        from flows.review import ab_review

        out = ab_review(model, str(predlog_dir.resolve()) if predlog_dir else None, apply, user_actor())
    d = out["decision"]
    if out["report"] is None:
        console.print(f"review: {d.reason}", highlight=False, soft_wrap=True)
        return
    c = out["counts"]
    console.print(
        f"{model}: champion v{out['champion']} vs challenger v{out['challenger']} — outcomes "
        f"{c['resolved']:,} resolved, {c['pending']:,} pending, {c['missing']:,} missing candles"
    )
    t = Table(title="verdict per horizon (always-valid sequential test)")
    t.add_column("horizon")
    t.add_column("verdict")
    for h, text in sorted(out["verdicts"].items()):
        t.add_row(str(h), text)
    for h, why in sorted(out["skipped"].items()):
        t.add_row(str(h), f"skipped: {why}")
    console.print(t)
    verdict = "[bold green]PROMOTE[/]" if d.promote else "[bold yellow]KEEP CHAMPION[/]"
    console.print(f"decision: {verdict} — {d.reason}", highlight=False, soft_wrap=True)
    for m in out["moves"]:
        console.print(f"moved: {m}", highlight=False, soft_wrap=True)
    if d.promote and not apply:
        console.print("(--no-apply: aliases left as they are)")
    console.print(f"report: {out['report']}  (MLflow run {out['run_id']}, experiment kairos-reviews)")


def rollback(
    model: str = ModelOpt,
    reason: str = typer.Option(
        "rollback from the command line", "--reason", help="Why (recorded in the history)."
    ),
) -> None:
    """Put the previous champion back (recorded like every alias move; run twice to undo)."""

    prepare()
    with errors():
        from flows.runtime import Runtime
        from registry.promotion import rollback as registry_rollback

        move = registry_rollback(Runtime.from_env().mlflow, model, reason=reason, actor=user_actor())
    console.print(f"rolled back: {move.describe()}", highlight=False, soft_wrap=True)


DECISIONS_SHOWN = 20  # newest decisions `kairos history` prints (hourly reviews add one each)


def _decision_row(rec) -> list[str]:
    """One decision as table cells: the gate (a) test, the lift, the baseline comparison, what failed."""
    m, p = rec.metrics, rec.params
    pp = p.get("metric") == "accuracy" or p.get("loss") == "direction"

    def num(x: float | None, signed: bool = True) -> str:
        if x is None:
            return "—"
        return f"{100 * x:{'+' if signed else ''}.2f} pp" if pp else f"{x:{'+' if signed else ''}.4g}"

    lift = m.get("lift", m.get("test.diff"))
    ci = (
        f" [{num(m['test.ci_low'])}, {num(m['test.ci_high'])}]"
        if "test.ci_low" in m and "test.ci_high" in m
        else ""
    )
    base = p.get("baseline", "none")
    vs = "—"
    if base != "none":
        vs = base
        if "baseline_test.diff" in m:
            vs += f" {num(m['baseline_test.diff'])}"
        if "baseline_test.p_value" in m:
            vs += f" (p={m['baseline_test.p_value']:.2g})"
    return [
        f"{rec.time:%Y-%m-%d %H:%M:%S}",
        f"v{rec.version}",
        f"v{rec.champion_version}" if rec.champion_version else "—",
        rec.source,
        "[green]promote[/]" if rec.decision == "promote" else "[yellow]keep[/]",
        f"{m['test.p_value']:.2g}" if "test.p_value" in m else "—",
        f"{num(lift)}{ci}" if lift is not None else "—",
        f"{int(m['rows']):,}" if "rows" in m else "—",
        vs,
        rec.failed_gates,
    ]


def _print_decisions(client, name: str) -> None:
    """Every promotion decision about `name`, promoted or not, newest `DECISIONS_SHOWN`: a table of the
    numbers, then each decision's reason on one unwrapped line (it is long, and grep-able)."""
    from registry.decisions import decisions

    recs = decisions(client, name)
    older = max(0, len(recs) - DECISIONS_SHOWN)
    title = f"promotion decisions — {name}" + (f" (newest {DECISIONS_SHOWN}; {older} older)" if older else "")
    t = Table(title=title)
    cols = ["time (UTC)", "version", "vs", "source", "decision", "p", "lift [CI]", "rows", "vs baseline"]
    for col in [*cols, "failed"]:
        t.add_column(col)
    for rec in recs[older:]:
        t.add_row(*_decision_row(rec))
    if not recs:
        t.add_row(*["—"] * 9, "no decision recorded yet")
    console.print(t)
    for rec in recs[older:]:
        console.print(
            f"  v{rec.version} [{rec.source}] {rec.decision}: {rec.reason}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


def history(
    symbol: str = typer.Option(None, "--symbol", "-s"),
    interval: str = IntervalOpt,
    model: str | None = typer.Option(None, "--model", help="Registered model name (instead of --symbol)."),
) -> None:
    """Every alias move (from, to, reason, time), every promotion decision (promoted or not, with its
    test, lift and baseline comparison) and which version served as champion when."""
    prepare()
    with errors():
        from flows.runtime import Runtime
        from registry.client import model_name
        from registry.history import history as alias_history
        from registry.history import sync_external_moves

        if not (symbol or model):
            raise ValueError("give --symbol SYM or --model NAME")
        name = model or model_name(symbol, interval)
        client = Runtime.from_env().mlflow
        sync_external_moves(client, name)
        moves = alias_history(client, name)
        if not moves:
            raise ValueError(
                f"no alias moves recorded for {name}; train a model first (kairos train --symbol ...)"
            )
        t = Table(title=f"alias history — {name}")
        for col in ["time (UTC)", "alias", "from", "to", "actor", "reason"]:
            t.add_column(col)
        for m in moves:
            t.add_row(
                f"{m.time:%Y-%m-%d %H:%M:%S}",
                m.alias,
                str(m.from_version or "—"),
                str(m.to_version or "—"),
                m.actor,
                m.reason,
            )
        console.print(t)
        _print_decisions(client, name)
        from flows.review import default_predlog_dir, served_history
        from pipelines.tasks import task_class, task_of_model

        served = served_history(client, name, default_predlog_dir(Runtime.from_env()))
        metric = task_class(task_of_model(name)).promotion_metric  # "accuracy", "qlike", ...
        t = Table(title=f"which version served as champion when, with live metrics — {name}")
        for col in [
            "version",
            "from (UTC)",
            "until (UTC)",
            "requests",
            "resolved",
            f"live {metric}",
            "accuracy [95% CI]",
            "IC",
            "P&L",
        ]:
            t.add_column(col)
        for r in served.itertuples(index=False):
            acc = (
                f"{r.accuracy:.2%} [{r.accuracy_ci_low:.2%}, {r.accuracy_ci_high:.2%}]"
                if r.accuracy == r.accuracy
                else "—"
            )
            t.add_row(
                str(r.version),
                f"{r.start:%Y-%m-%d %H:%M:%S}",
                f"{r.end:%Y-%m-%d %H:%M:%S}" if r.end == r.end and r.end is not None else "now",
                f"{int(r.requests):,}",
                f"{int(r.resolved):,}",
                f"{r.value:.4f}" if isinstance(r.value, float) and r.value == r.value else "—",
                acc,
                f"{r.ic:+.4f}" if r.ic == r.ic else "—",
                f"{r.pnl_total_return:+.2%}" if r.pnl_total_return == r.pnl_total_return else "—",
            )
        console.print(t)
