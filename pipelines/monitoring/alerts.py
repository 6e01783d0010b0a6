"""Alert rules (configs/monitoring.yaml) evaluated into checks, and what an alert looks like in each sink.

Every rule becomes one or more `Check`s (drift: one per feature and output; live performance: one per
horizon), each `ok`, `fired` or `skipped` (with the reason: no reference profile, too few outcomes).
A fired check is an alert: one line that starts with `ALERT` for the terminal and the log,

    ALERT <check> <severity> <model> v<version> <subject>: <statistic> <value> <op> <threshold> (<detail>)
    ALERT drift critical returns-SYNTHUSDT-1m v1 feature volatility_5m: psi 2.437 > 1.017 (1,106 rows)

and, for the webhook, a Slack-compatible JSON body (`{"text", "blocks"}`; `text` alone is what
Mattermost, Rocket.Chat and Slack's fallback show). The Prometheus side of alerting is the rules file
configs/prometheus/kairos-alerts.yml over the serving metrics.
Pure stdlib + numpy/pandas (the webhook POST uses urllib): the flow decides when to send.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipelines.config import SEVERITIES, MonitoringRules
from pipelines.contracts.errors import KairosError
from pipelines.monitoring.live import LivePerformance

OK, FIRED, SKIPPED = "ok", "fired", "skipped"
SLACK_TEXT_LIMIT = 2900  # Slack's section block takes 3000 characters


class WebhookError(KairosError):
    """The alert webhook refused or could not be reached; `transient` says whether a retry may help."""

    def __init__(self, msg: str, transient: bool):
        super().__init__(msg)
        self.transient = transient


@dataclass(frozen=True)
class Check:
    """One evaluated rule on one subject.

    Attributes:
        check: the rule's name in configs/monitoring.yaml ("drift", "live_below_backtest", ...).
        subject: what was checked: "feature volume", "output returns_h1", "h1", "predictions", "store".
        statistic: the number's name: "psi", "accuracy_24h_ci_high", "violations_per_hour", ...
        value, threshold: the number and the bound it was held to (`op` says which side fires).
        op: ">" or "<": the check fires when `value op threshold`.
        severity: "info" | "warning" | "critical".
        status: "ok" | "fired" | "skipped".
        detail: the supporting numbers (rows, backtest, baseline) or why the check was skipped.
        version: the model version the check judged when it is not the serving one (a challenger's
            live performance); None = the version the alert line is given.
    """

    check: str
    subject: str
    statistic: str
    value: float
    threshold: float
    op: str
    severity: str
    status: str
    detail: str = ""
    version: str | None = None

    @property
    def fired(self) -> bool:
        return self.status == FIRED

    def line(self, model: str, version: str | None) -> str:
        """The one-line alert: `ALERT <check> <severity> <model> v<version> <subject>: <stat> <v> <op> <thr> (<detail>)`."""
        tail = f" ({self.detail})" if self.detail else ""
        return (
            f"ALERT {self.check} {self.severity} {model} v{self.version or version or '?'} {self.subject}: "
            f"{self.statistic} {fmt(self.value)} {self.op} {fmt(self.threshold)}{tail}"
        )


def fmt(x: float) -> str:
    """Numbers in alert lines: 4 significant digits, "inf" for never, "nan" for unknown."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:,.0f}"


def _check(
    check: str,
    subject: str,
    stat: str,
    value: float,
    thr: float,
    op: str,
    sev: str,
    detail: str = "",
    version=None,
) -> Check:
    over = value > thr if op == ">" else value < thr  # NaN compares False: an unknown value never fires
    return Check(
        check, subject, stat, float(value), float(thr), op, sev, FIRED if over else OK, detail, version
    )


def _skipped(check: str, subject: str, stat: str, sev: str, why: str, version=None) -> Check:
    return Check(check, subject, stat, math.nan, math.nan, "", sev, SKIPPED, why, version)


# ------------------------------------------------------------------------------------------- rules
def drift_checks(drift: Sequence[Any] | None, rules: MonitoringRules, skipped: str = "") -> list[Check]:
    """One check per profile column (`pipelines.monitoring.drift.DriftCheck`: its calibrated verdict)."""
    r = rules.drift
    if not r.enabled:
        return []
    if drift is None:
        return [_skipped("drift", "features and outputs", "-", r.severity, skipped or "no drift statistics")]
    out = []
    for d in drift:
        status = FIRED if d.fired else OK
        detail = f"{d.rows:,} rows" + ("" if math.isfinite(d.threshold) else "; not calibrated: never fires")
        out.append(
            Check(
                "drift",
                f"{d.kind} {d.name}",
                d.statistic,
                float(d.value),
                float(d.threshold),
                ">",
                r.severity,
                status,
                detail,
            )
        )
    return out


def _interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def live_checks(perf: Iterable[LivePerformance], rules: MonitoringRules) -> list[Check]:
    """Per version and horizon: live vs the backtest interval, and live vs the best naive rule on the same rows.

    The baseline rule's `alpha` is family-wise over a version's horizons (Bonferroni: each horizon's
    one-sided test at alpha / horizons tested), or five horizons would fire by chance one hour in five.
    """
    out = []
    bt, base = rules.live_below_backtest, rules.live_below_baseline
    perf = list(perf)
    tested: dict[str, int] = {}
    for p in perf:
        tested[p.version] = tested.get(p.version, 0) + (p.baseline_rows >= base.min_rows)
    for p in perf:
        subject, v = f"h{p.horizon}", p.version
        if bt.enabled:
            # the live bound nearest the backtest: the whole live interval must sit on the wrong side
            worse_op = "<" if p.higher_is_better else ">"
            stat = f"{p.name}_ci_{'high' if p.higher_is_better else 'low'}" if p.ci else p.name
            value = (p.ci[1] if p.higher_is_better else p.ci[0]) if p.ci else p.value
            if p.rows < bt.min_rows:
                why = f"{p.rows:,} of {bt.min_rows:,} resolved rows"
                out.append(_skipped("live_below_backtest", subject, stat, bt.severity, why, v))
            elif p.backtest_ci is None:
                why = "no walk-forward interval in the manifest"
                out.append(_skipped("live_below_backtest", subject, stat, bt.severity, why, v))
            else:
                thr = p.backtest_ci[0] if p.higher_is_better else p.backtest_ci[1]
                detail = (
                    f"{p.name} {fmt(p.value)}{_interval(p.ci)} on {p.rows:,} rows; "
                    f"backtest {fmt(p.backtest if p.backtest is not None else math.nan)}"
                    f"{_interval(p.backtest_ci)}; gap {fmt(p.gap)}"
                )
                out.append(
                    _check("live_below_backtest", subject, stat, value, thr, worse_op, bt.severity, detail, v)
                )
        if base.enabled:
            stat = f"p_worse_than_{p.baseline}" if p.baseline else "p_worse_than_baseline"
            if p.baseline_rows < base.min_rows:
                why = f"{p.baseline_rows:,} of {base.min_rows:,} rows scored by model and rule"
                out.append(_skipped("live_below_baseline", subject, stat, base.severity, why, v))
            else:
                m = max(tested[v], 1)
                detail = (
                    f"{p.name} {fmt(p.value)} vs {p.baseline} {fmt(p.baseline_value)} on "
                    f"{p.baseline_rows:,} rows; one-sided Diebold-Mariano at {fmt(base.alpha)} / {m} horizons"
                )
                thr = base.alpha / m
                out.append(
                    _check(
                        "live_below_baseline", subject, stat, p.p_worse, thr, "<", base.severity, detail, v
                    )
                )
    return out


def latency_check(hours: pd.DataFrame, rules: MonitoringRules) -> list[Check]:
    """Fires when every hour of the rule's span had more violations than its threshold."""
    r = rules.latency_budget
    if not r.enabled:
        return []
    if hours.empty or int(hours["predictions"].sum()) == 0:
        return [
            _skipped(
                "latency_budget",
                "predictions",
                "violations_per_hour",
                r.severity,
                "no predictions in the span",
            )
        ]
    least = float(hours["violations"].min())
    detail = (
        f"budget {fmt(r.budget_us)} µs; fewest in an hour of the last {len(hours)} h; "
        f"{int(hours['violations'].sum()):,} of {int(hours['predictions'].sum()):,} predictions over budget"
    )
    return [
        _check(
            "latency_budget",
            "predictions",
            "violations_per_hour",
            least,
            r.threshold,
            ">",
            r.severity,
            detail,
        )
    ]


def staleness_check(
    check: str, subject: str, age_s: float, rules: MonitoringRules, newest: str = ""
) -> list[Check]:
    """Fires when the newest prediction / stored candle is older than the rule's threshold."""
    r = getattr(rules, check)
    if not r.enabled:
        return []
    detail = f"newest {newest}" if newest else "none at all"
    return [_check(check, subject, "age_minutes", age_s / 60.0, r.threshold / 60.0, ">", r.severity, detail)]


def validation_check(failed: int | None, message: str, rules: MonitoringRules) -> list[Check]:
    """The GX candle suite on the monitored candles (`failed` expectations, None: no candles to check):
    failing data fires, and drift on it never starts a retrain."""
    r = rules.data_validation
    if not r.enabled:
        return []
    if failed is None:
        return [
            _skipped("data_validation", "store", "failed_expectations", r.severity, message or "no candles")
        ]
    return [_check("data_validation", "store", "failed_expectations", failed, 0, ">", r.severity, message)]


def retrain_verdict(
    *,
    retrain: bool,
    valid: bool | None,
    valid_message: str,
    last_retrain_ms: int | None,
    now_ms: int,
    cooldown_s: float,
) -> tuple[bool, str]:
    """Whether fired drift starts a retrain, and why not: only on candles that passed validation (drift
    on broken data is a data problem), and at most once per cooldown (persistent drift would otherwise
    retrain every hour while the gates keep refusing). Returns (start, reason)."""
    if not retrain:
        return False, "retraining is off (--no-retrain or retrain.enabled: false)"
    if not valid:
        return (
            False,
            f"the drifted candles failed validation: a data problem, not retrained ({valid_message})",
        )
    if last_retrain_ms is not None and now_ms - last_retrain_ms < cooldown_s * 1000:
        when = pd.Timestamp(last_retrain_ms, unit="ms", tz="UTC")
        return False, (
            f"a drift retrain already started at {when:%Y-%m-%d %H:%M} UTC "
            f"(cooldown {pd.Timedelta(seconds=cooldown_s)})"
        )
    return True, "drift on valid data"


def run_metrics(checks: Sequence[Check], perf: Sequence[LivePerformance], version: str) -> dict[str, float]:
    """The numbers of one monitor run as flat MLflow metrics: every evaluated check
    (`<check>.<subject>.<statistic>`, a challenger's prefixed `v<version>.`), the live metrics per version
    and horizon (`live.v<version>.h<h>.<name>`, `.gap`, `.baseline`, `.rows`) and `alerts`."""
    out: dict[str, float] = {}
    for c in checks:
        if c.status != SKIPPED:
            who = f"v{c.version}." if c.version and c.version != version else ""
            out[f"{c.check}.{who}{c.subject}.{c.statistic}".replace(" ", ".")] = c.value
    for p in perf:
        key = f"live.v{p.version}.h{p.horizon}"
        out |= {f"{key}.{p.name}": p.value, f"{key}.gap": p.gap, f"{key}.rows": float(p.rows)}
        out[f"{key}.baseline"] = p.baseline_value
    out["alerts"] = float(sum(c.fired for c in checks))
    return out


# ------------------------------------------------------------------------------------------- sinks
def at_least(severity: str, floor: str) -> bool:
    """`severity` is `floor` or louder (info < warning < critical)."""
    return SEVERITIES.index(severity) >= SEVERITIES.index(floor)


def slack_payload(
    alerts: Sequence[Check], *, model: str, version: str | None, report: str | None = None
) -> dict[str, Any]:
    """A Slack-compatible incoming-webhook body: `text` (the fallback every chat tool shows) and `blocks`."""
    worst = max((a.severity for a in alerts), key=SEVERITIES.index, default="info")
    head = f"kairos monitor: {len(alerts)} alert(s) on {model} v{version or '?'} (worst: {worst})"
    lines = [a.line(model, version) for a in alerts]
    body, shown = "", 0
    for line in lines:
        if len(body) + len(line) + 1 > SLACK_TEXT_LIMIT:
            break
        body += line + "\n"
        shown += 1
    if shown < len(lines):
        body += f"… and {len(lines) - shown} more"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{body.rstrip()}```"}},
    ]
    if report:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"report: {report}"}]})
    return {"text": f"{head}\n{body.rstrip()}", "blocks": blocks}


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float = 5.0) -> int:
    """POST `payload` as JSON; returns the HTTP status.

    Raises:
        WebhookError: transient for connection errors, timeouts, 408, 429 and 5xx (worth a retry),
            not transient for other 4xx (the endpoint refuses this request).
    """
    import urllib.error
    import urllib.request

    if not str(url).startswith(("http://", "https://")):
        raise WebhookError(
            f"alert webhook URL {url!r} is not an http(s) URL; fix sinks.webhook.url or $KAIROS_ALERT_WEBHOOK",
            transient=False,
        )
    body = json.dumps(payload, allow_nan=False).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"content-type": "application/json", "user-agent": "kairos-monitor"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            r.read(1024)
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.close()
        raise WebhookError(
            f"alert webhook {url} answered HTTP {e.code}", transient=e.code >= 500 or e.code in (408, 429)
        ) from None
    except (OSError, ValueError) as e:
        raise WebhookError(
            f"alert webhook {url} unreachable: {type(e).__name__}: {e}", transient=True
        ) from None
