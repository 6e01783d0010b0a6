"""MLflow search latency over 10,000 training runs: PostgreSQL vs SQLite (run on demand).

The question is what the registry's readers pay once the daily loop has run for a while (100 symbols x
100 days = 10,000 runs and model versions): Kairos' own query shapes, timed through `MlflowClient` on
the tracking store directly (`postgresql+psycopg://` and `sqlite:///`; a tracking server adds the same
HTTP cost to both).

Generating the runs: one run and model version are made through the MLflow client (so every column
holds what MLflow writes), then cloned in bulk with SQL into MLflow's own tables with new ids, names,
times and metric values. Through the API a run costs 3 calls of 40-80 ms each on this 2-core machine
(create_run, log_batch, create_model_version): 10,000 would take 20+ minutes per backend. Search
results are checked (counts per model) so the clones are proven readable by MLflow.

PostgreSQL is the test cluster of tests/fixtures/postgres.py (Debian packages, fsync off: write
figures are optimistic, reads are not affected). Writes results/mlflow_search.json.

    python benchmarks/bench_mlflow_search.py [--models 100] [--runs-per-model 100] [--reps 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

N_PARAMS, N_METRICS = 30, 40  # a Kairos training run logs ~40 params and ~100+ fold metrics


def _model(i: int) -> str:
    return f"returns-SYM{i:03d}USDT-1m"


def populate(uri: str, models: int, runs_per_model: int, seed: int = 7) -> dict:
    """Experiment + registered models via the API, one template run/version, then bulk clones."""
    import sqlalchemy as sa
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    rng = random.Random(seed)
    client = MlflowClient(uri, registry_uri=uri)
    t0 = time.perf_counter()
    exp = client.create_experiment("kairos-training")
    for i in range(models):
        client.create_registered_model(_model(i))
    tags = {"kairos.kind": "training", "task": "returns", "model_type": "lightgbm", "symbol": "SYM000USDT"}
    tags |= {"registered_model": _model(0), "interval": "1m", "synthetic": "false", "gate.parity": "passed"}
    tmpl = client.create_run(exp, run_name="template", tags=tags)
    tid = tmpl.info.run_id
    metrics = [Metric(f"fold.m{k}", 0.5, 0, k % 6) for k in range(N_METRICS - 2)]
    metrics += [Metric("newest.h1.accuracy", 0.5, 0, 0), Metric("parity_max_abs", 1e-6, 0, 0)]
    params = [Param(f"cfg.p{k}", str(k)) for k in range(N_PARAMS - 1)] + [Param("model_type", "lightgbm")]
    client.log_batch(tid, metrics=metrics, params=params)
    client.set_terminated(tid)
    client.create_model_version(
        _model(0), f"{tmpl.info.artifact_uri}/bundle", run_id=tid, tags={"task": "returns"}
    )
    api_s = time.perf_counter() - t0

    engine = sa.create_engine(uri)
    meta = sa.MetaData()
    names = ["runs", "tags", "params", "metrics", "latest_metrics", "model_versions", "model_version_tags"]
    meta.reflect(engine, only=names)
    t = {n: meta.tables[n] for n in names}
    with engine.connect() as con:

        def rows(table, **where):
            q = sa.select(t[table]).where(*(t[table].c[k] == v for k, v in where.items()))
            return [dict(r._mapping) for r in con.execute(q)]

        run_row = rows("runs", run_uuid=tid)[0]
        tag_rows, param_rows = rows("tags", run_uuid=tid), rows("params", run_uuid=tid)
        metric_rows, latest_rows = rows("metrics", run_uuid=tid), rows("latest_metrics", run_uuid=tid)
        mv_row = rows("model_versions", name=_model(0), version=1)[0]
        mvt_rows = rows("model_version_tags", name=_model(0), version=1)

    t1 = time.perf_counter()
    base = run_row["start_time"]
    total = 0
    for i in range(models):
        batch: dict[str, list] = {n: [] for n in names}
        for v in range(1, runs_per_model + 1):
            if i == 0 and v == 1:
                continue  # the template
            rid = uuid.uuid4().hex
            start = base + (v * models + i) * 60_000
            batch["runs"].append(
                run_row
                | {
                    "run_uuid": rid,
                    "name": f"lightgbm-SYM{i:03d}USDT-1m-{v}",
                    "start_time": start,
                    "end_time": start + 30_000,
                    "artifact_uri": run_row["artifact_uri"].replace(tid, rid),
                }
            )
            sub = {"symbol": f"SYM{i:03d}USDT", "registered_model": _model(i)}
            sub["synthetic"] = "true" if i % 10 == 0 else "false"
            batch["tags"] += [r | {"run_uuid": rid, "value": sub.get(r["key"], r["value"])} for r in tag_rows]
            batch["params"] += [r | {"run_uuid": rid} for r in param_rows]
            values = {r["key"]: rng.uniform(0.46, 0.56) for r in latest_rows}
            batch["metrics"] += [r | {"run_uuid": rid, "value": values[r["key"]]} for r in metric_rows]
            batch["latest_metrics"] += [r | {"run_uuid": rid, "value": values[r["key"]]} for r in latest_rows]
            batch["model_versions"].append(
                mv_row
                | {
                    "name": _model(i),
                    "version": v,
                    "run_id": rid,
                    "source": mv_row["source"].replace(tid, rid),
                    "creation_time": start + 31_000,
                    "last_updated_time": start + 31_000,
                }
            )
            batch["model_version_tags"] += [r | {"name": _model(i), "version": v} for r in mvt_rows]
            total += 1
        with engine.begin() as con:
            for n in names:  # parents before children (foreign keys)
                if batch[n]:
                    con.execute(t[n].insert(), batch[n])
    engine.dispose()
    return {
        "runs": total + 1,
        "api_setup_s": round(api_s, 1),
        "bulk_insert_s": round(time.perf_counter() - t1, 1),
        "experiment_id": exp,
    }


def queries(client, exp: str, models: int, runs_per_model: int, rng: random.Random) -> dict:
    """Kairos' search shapes; each callable returns the number of rows found (checked)."""

    def runs_of_model():  # a model's training runs, newest first (history, reports)
        name = _model(rng.randrange(models))
        found = client.search_runs(
            [exp],
            f"tags.registered_model = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=100,
        )
        assert len(found) == min(100, runs_per_model), len(found)
        return len(found)

    def best_by_metric():  # the universe's best newest-window accuracies among real-data runs
        found = client.search_runs(
            [exp],
            "metrics.`newest.h1.accuracy` > 0.55 and tags.synthetic = 'false'",
            order_by=["metrics.`newest.h1.accuracy` DESC"],
            max_results=50,
        )
        assert found and all(r.data.metrics["newest.h1.accuracy"] > 0.55 for r in found)
        return len(found)

    def param_and_tag():  # runs of one symbol with a given model family
        sym = f"SYM{rng.randrange(models):03d}USDT"
        found = client.search_runs(
            [exp], f"params.model_type = 'lightgbm' and tags.symbol = '{sym}'", max_results=1000
        )
        assert len(found) == runs_per_model, len(found)
        return len(found)

    def versions_of_model():  # flows/fanout.latest_versions: every version of one model
        name = _model(rng.randrange(models))
        found = client.search_model_versions(f"name = '{name}'")
        assert len(found) == runs_per_model, len(found)
        return len(found)

    def version_of_run():  # which version a training run produced
        name = _model(rng.randrange(models))
        run_id = client.search_runs([exp], f"tags.registered_model = '{name}'", max_results=1)[0].info.run_id
        t0 = time.perf_counter()
        found = client.search_model_versions(f"run_id = '{run_id}'")
        assert len(found) == 1
        return time.perf_counter() - t0  # timed alone, without the lookup of a run id

    return {
        "search_runs: tag = model, newest 100": runs_of_model,
        "search_runs: metric > x and tag, order by metric, 50": best_by_metric,
        "search_runs: param and tag, 100 rows": param_and_tag,
        "search_model_versions: name = model (100 versions)": versions_of_model,
        "search_model_versions: run_id = one run": version_of_run,
    }


def time_queries(uri: str, exp: str, models: int, runs_per_model: int, reps: int) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    out = {}
    for label, fn in queries(client, exp, models, runs_per_model, random.Random(11)).items():
        fn()  # warm-up: connections, caches
        lat = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = fn()
            lat.append(r if isinstance(r, float) else time.perf_counter() - t0)
        lat.sort()
        out[label] = {
            "p50_ms": round(1000 * statistics.median(lat), 2),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
            "reps": reps,
        }
        print(f"  {label}: p50 {out[label]['p50_ms']} ms, p99 {out[label]['p99_ms']} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--runs-per-model", type=int, default=100)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from tests.fixtures.postgres import new_database, postgres_server

    tmpdir = tempfile.TemporaryDirectory(prefix="kairos-bench-search-")  # removed at exit
    tmp = Path(tmpdir.name)
    results = {}
    with contextlib.contextmanager(postgres_server.__wrapped__)() as pg:
        backends = {
            "sqlite": f"sqlite:///{tmp / 'mlflow.db'}",
            "postgresql": new_database(pg, "search").replace("postgresql://", "postgresql+psycopg://", 1),
        }
        for backend, uri in backends.items():
            load = os.getloadavg()[0]
            print(
                f"{backend}: generating {args.models * args.runs_per_model} runs (load {load:.2f})",
                flush=True,
            )
            gen = populate(uri, args.models, args.runs_per_model)
            print(f"  {gen}", flush=True)
            lat = time_queries(uri, gen.pop("experiment_id"), args.models, args.runs_per_model, args.reps)
            results[backend] = {
                "generation": gen,
                "latency": lat,
                "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
            }
    ratio = {
        q: round(results["postgresql"]["latency"][q]["p50_ms"] / results["sqlite"]["latency"][q]["p50_ms"], 2)
        for q in results["sqlite"]["latency"]
    }
    out = {
        "what": "MLflow search latency through MlflowClient on the tracking store, Kairos query shapes",
        "runs": args.models * args.runs_per_model,
        "models": args.models,
        "params_per_run": N_PARAMS,
        "metrics_per_run": N_METRICS,
        "backends": results,
        "postgresql_over_sqlite_p50": ratio,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "note": "2 shared cores; load_avg_1m = [before generation, after timing]; PostgreSQL with fsync off",
        "command": "python benchmarks/bench_mlflow_search.py",
    }
    dst = REPO / "benchmarks" / "results" / "mlflow_search.json"
    dst.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(ratio, indent=2))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
