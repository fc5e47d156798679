"""opal dataset synth/partition/register/refresh/list/show"""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from opal.cli._app import App, console, emit_json, pass_app, rich_console


@click.group("dataset")
def dataset() -> None:
    """Register datasets and make synthetic ones."""


@dataset.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--subscribers", type=int, default=20_000, show_default=True)
@click.option("--days", type=int, default=14, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--events-per-day", type=float, default=5.0, show_default=True)
@click.option("--shock-day", type=int, default=None, help="Day of a displacement shock.")
@click.option("--shock-region", default=None, help="Region whose residents are displaced.")
@click.option("--shock-share", type=float, default=None, help="Share of its residents who move (0-1).")
@click.option("--parts", type=int, default=None,
              help="Write a partitioned directory of N parts (bucketed by the node's keyed unit hash).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def synth(ctx: click.Context, out: Path, subscribers: int, days: int, seed: int, events_per_day: float,
          shock_day: int | None, shock_region: str | None, shock_share: float | None, parts: int | None,
          as_json: bool) -> None:
    """Write a synthetic CDR dataset (Parquet) to OUT (a directory with --parts)."""
    from opal.data.synth import Shock, synthesize
    from opal.errors import BadInputError

    shock = None
    given = [v is not None for v in (shock_day, shock_region, shock_share)]
    if any(given) and not all(given):
        raise BadInputError("a shock needs all of --shock-day, --shock-region and --shock-share")
    if all(given):
        shock = Shock(day=shock_day, region=shock_region, share=shock_share)  # type: ignore[arg-type]
    with Progress(TextColumn("synthesizing"), BarColumn(), TextColumn("{task.completed}/{task.total} days"),
                  TimeRemainingColumn(), console=rich_console(stderr=True), transient=True, disable=as_json) as bar:
        task = bar.add_task("synth", total=days)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        key = None
        if parts is not None:
            from opal.data.partition import node_key
            from opal.home import Home

            app = ctx.find_object(App)
            key = node_key(Home.resolve(app.home if app else None))
        summary = synthesize(out, subscribers=subscribers, days=days, seed=seed, shock=shock,
                             events_per_day=events_per_day, progress=progress, parts=parts, key=key)
    doc = {
        "path": str(summary.path), "rows": summary.rows, "subscribers": summary.subscribers,
        "days": summary.days, "seed": summary.seed, "regions": summary.regions, "cells": summary.cells,
        "bytes": summary.bytes,
        "ground_truth": str(summary.ground_truth_path) if summary.ground_truth_path else None,
        "domains": str(summary.domains_path) if summary.domains_path else None,
    }
    if as_json:
        emit_json(doc)
    else:
        console.print(f"wrote {summary.rows:,} CDR rows for {summary.subscribers:,} subscribers over "
                      f"{summary.days} days in {summary.regions} regions to {summary.path}")
        if summary.ground_truth_path:
            console.print(f"shock ground truth: {summary.ground_truth_path}")
        console.print(f"public group domains: {summary.domains_path}")


@dataset.command("partition")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--parts", type=int, required=True, help="Number of partitions.")
@click.option("--schema", default="cdr", show_default=True, help="Schema whose privacy unit is the bucket key.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def partition(app: App, source: Path, out: Path, parts: int, schema: str, as_json: bool) -> None:
    """Stream SOURCE (Parquet/CSV) into a Hive-style directory OUT of N parts, bucketed by a
    keyed hash of the privacy unit (the key stays in this node's OPAL_HOME)."""
    from opal.data import catalog
    from opal.data.partition import node_key
    from opal.data.partition import partition as split
    from opal.errors import BadInputError

    if schema not in catalog.SCHEMAS:
        raise BadInputError(f"unknown schema {schema!r}; known: {', '.join(catalog.SCHEMAS)}")
    parted = split(source, out, parts=parts, key=node_key(app.node.home), unit=catalog.SCHEMAS[schema].unit)
    from opal.release.domains import sidecar_for

    sidecar = sidecar_for(source)
    if sidecar.is_file() and not sidecar_for(out).exists():
        sidecar_for(out).write_bytes(sidecar.read_bytes())  # same public domains: same data
    if as_json:
        emit_json(parted.to_dict())
    else:
        console.print(f"wrote {sum(parted.rows):,} rows in {parted.parts} partitions to {out}")


@dataset.command("register")
@click.argument("name")
@click.argument("source", metavar="PATH|postgresql://HOST/DB/TABLE")
@click.option("--schema", default="cdr", show_default=True)
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Release policy TOML (default: the built-in one, see governance/release_policy.toml).")
@click.option("--domains", "domains_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Public group domains (TOML: COLUMN = [labels] or { range = [lo, hi] }); "
                   "default: STEM.domains.toml next to the file, if present.")
@click.option("--parts", type=int, default=None,
              help="A PostgreSQL table only: snapshot it into a partitioned directory of N parts "
                   "(bucketed by the node's keyed unit hash), at registration and every refresh.")
@click.option("--key", default=None, help="Operator key that records the registration.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def register(
    app: App, name: str, source: str, schema: str, policy_file: Path | None, domains_file: Path | None,
    parts: int | None, key: str | None, as_json: bool,
) -> None:
    """Register a Parquet/CSV file, a partitioned directory or a PostgreSQL table under NAME,
    with its release policy and budget.

    A table is copied to a Parquet snapshot under OPAL_HOME (the sandbox reads
    the snapshot; with --parts N, a partitioned directory streamed from the
    table); its content fingerprint is the dataset version. Content
    registered already under another name shares that dataset's budget."""
    from opal.data import catalog
    from opal.release.policy import ReleasePolicy

    policy = ReleasePolicy.load(policy_file) if policy_file else None
    signer = app.node.keyring.signer_for(key, "operator")
    target: Path | str = source if catalog.is_table_url(source) else Path(source)
    ds = catalog.register(app.node, name, target, schema=schema, policy=policy, domains=domains_file,
                          signer=signer, parts=parts)
    from opal.release.budget import show as budget_of

    state = budget_of(app.node, name)[0]
    if as_json:
        emit_json(dict(ds.to_dict(), budget=state.to_dict()))
    else:
        shared = f" (shared with {', '.join(state.shared_with)}: same content)" if state.shared_with else ""
        split = f" in {len(ds.partition_files())} partitions" if ds.partitioned else ""
        console.print(f"registered dataset [bold]{name}[/]: {ds.rows:,} rows{split}, schema {schema}, "
                      f"version {ds.version[:12]}, budget ε={state.total:g}{shared}, "
                      f"domains: {', '.join(ds.domains) or 'none'}")


@dataset.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, as_json: bool) -> None:
    """Registered datasets."""
    from opal.data import catalog

    items = catalog.list_datasets(app.node)
    if as_json:
        emit_json([d.to_dict() for d in items])
        return
    table = Table("name", "schema", "rows", "version", "source")
    for d in items:
        table.add_row(d.name, d.schema, f"{d.rows:,}", d.version[:12], d.source or str(d.path))
    console.print(table)


@dataset.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, name: str, as_json: bool) -> None:
    """One dataset with its release policy."""
    from opal.data import catalog

    d = catalog.get(app.node, name)
    if as_json:
        emit_json(d.to_dict())
        return
    console.print_json(data=d.to_dict())


@dataset.command("refresh")
@click.argument("name")
@click.option("--key", default=None, help="Operator key that records a new version.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def refresh(app: App, name: str, key: str | None, as_json: bool) -> None:
    """Re-read NAME's file or table; record a new version if its content changed."""
    from opal.data import catalog

    signer = app.node.keyring.signer_for(key, "operator")
    before = catalog.get(app.node, name).version
    d = catalog.refresh(app.node, name, signer=signer)
    if as_json:
        emit_json(dict(d.to_dict(), changed=d.version != before))
    elif d.version != before:
        console.print(f"dataset {name}: new version {d.version[:12]} ({d.rows:,} rows); workers reload it")
    else:
        console.print(f"dataset {name}: unchanged (version {d.version[:12]})")


COMMANDS = [dataset]
