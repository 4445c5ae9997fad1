"""The ``kmpray`` command line (click): demo, engine control, inspection, events, bench."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click

from .enums import TaskState


def _init_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():  # actor logs must not mix into the CLI's output (e.g. --json)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


NO_RAY = "Could not find any running Ray instance"


def _hint(exc: Exception) -> str:
    """The error, and what to do when it is that no Ray runs here."""
    text = str(exc)
    if NO_RAY in text:
        text += (" (start one with `ray start --head`, then `kmpray start`;"
                 " `kmpray demo` runs on an embedded one)")
    return text


def _json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def engine_config(text: str | None, shards: int | None = None) -> Any:
    """``--config``: EngineConfig fields as a JSON object, given inline or as a file's path
    (``@path`` too); ``--shards`` sets ``scheduler_shards`` over it. None when neither is
    given (the defaults). Anything wrong is a usage error naming the field."""
    from pathlib import Path

    from pydantic import ValidationError

    from ._model import one_line
    from .config import EngineConfig

    fields: Any = {}
    if text:
        raw = text
        path = Path(text.removeprefix("@")).expanduser()
        if not text.lstrip().startswith("{") and (text.startswith("@") or path.exists() or not _json(text)):
            try:
                raw = path.read_text()
            except OSError as exc:
                raise click.BadParameter(f"cannot read {str(path)!r}: {exc.strerror or exc}",
                                         param_hint="--config") from None
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON ({exc})", param_hint="--config") from None
        if not isinstance(fields, dict):
            got = type(fields).__name__
            raise click.BadParameter(f"must be a JSON object of EngineConfig fields, got {got}",
                                     param_hint="--config")
    if shards:
        fields["scheduler_shards"] = shards
    if not fields:
        return None
    try:
        return EngineConfig(**fields)
    except ValidationError as exc:
        said = one_line(exc, "EngineConfig", with_input=True)
        raise click.BadParameter(said, param_hint="--config") from None
    except TypeError as exc:  # a key that is not a string (JSON keys are) or a positional mix-up
        raise click.BadParameter(str(exc), param_hint="--config") from None


def _connect(address: str | None, namespace: str, state_dir: str | None, config: Any = None,
             platform: str | None = None) -> Any:
    """Attach to the engine (a running one as it runs: its shard count too), or start it."""
    from .client import connect
    from .errors import StoreRefused

    try:
        _init_ray(address)
        return connect(address=address, namespace=namespace, state_dir=state_dir, config=config,
                       platform=platform)
    except StoreRefused as exc:  # reached, and it said why it will not serve that store
        raise click.ClickException(f"the engine refused its store: {exc}") from None
    except Exception as exc:
        raise click.ClickException(f"cannot reach the engine: {_hint(exc)}") from None


def _reach_cluster(address: str | None) -> None:
    """Connect to a running Ray (without --address: the one on this machine), never start one."""
    try:
        _init_ray(address or "auto")  # no cluster: an error, not a new local Ray
    except Exception as exc:
        raise click.ClickException(f"cannot reach the cluster: {_hint(exc)}") from None


def _attach(address: str | None, namespace: str, state_dir: str | None) -> Any:
    """Attach to the running engine of ``namespace``; never start one. An inspection with a
    mistyped ``--namespace`` (or no engine yet) would otherwise leave a new engine of
    detached actors running on the cluster."""
    from .actors.bootstrap import not_running

    _reach_cluster(address)
    if (trouble := not_running(namespace)) is not None:
        raise click.ClickException(f"{trouble}; `kmpray start --namespace {namespace}` starts one")
    return _connect(address, namespace, state_dir)


engine_options = [
    click.option("--address", default=None, help="Ray address ('auto' for a running cluster)."),
    click.option("--namespace", default="kmpray", show_default=True, help="The engine's namespace."),
    click.option("--state-dir", default=None, help="Where the engine's store lives (default ~/.kmpray/NS)."),
]


#: ``kmpray list`` without --limit: a screenful or two, not an engine's 100,000 rows.
LIST_LIMIT = 100


def with_engine(fn: Any) -> Any:
    for option in reversed(engine_options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kmpray")
def main() -> None:
    """kmpray: background tasks with triggers, constraints, chains and events, on Ray."""


@main.command()
@click.option("--state-dir", default=None,
              help="Keep the demo's store here (default: a temp dir, removed at the end).")
@click.option("--hours", default=1, show_default=True, type=click.IntRange(1, 48), help="Virtual hours to run.")
def demo(state_dir: str | None, hours: int) -> None:
    """Run the main job on an embedded local Ray, in virtual time."""
    from .demo import run

    sys.exit(run(state_dir=state_dir, hours=hours))


@main.command()
@with_engine
@click.option("--shards", default=None, type=click.IntRange(1, 64),
              help="scheduler_shards for a new state dir; a state dir written before must be started "
                   "with the count it was written with (default 1).")
@click.option("--config", default=None, metavar="JSON|PATH",
              help='EngineConfig fields as a JSON object, inline or in a file, e.g. '
                   '\'{"heavy_resources": {"heavy": 1}, "http_deny_private": true}\'. Not stored: '
                   'give it at every start.')
@click.option("--platform", default=None, type=click.Choice(["cluster", "android", "ios"]),
              help="The platform profile of a new engine (default cluster).")
def start(address: str | None, namespace: str, state_dir: str | None, shards: int | None,
          config: str | None, platform: str | None) -> None:
    """Start (or find) the engine on a Ray cluster; it keeps running after this exits."""
    sched = _connect(address or "auto", namespace, state_dir, engine_config(config, shards), platform)
    status = sched.status()
    click.echo(f"engine {namespace!r} running: {status['executors']} executors, "
               f"{sched.shards} scheduler shard(s), state in {status['state_dir']}")


@main.command()
@engine_options[0]
@engine_options[1]
def stop(address: str | None, namespace: str) -> None:
    """Stop a running engine's actors; its tasks stay in its store for the next start."""
    from .actors.bootstrap import stop_engine

    _reach_cluster(address)
    stopped = stop_engine(namespace)
    if not stopped:
        raise click.ClickException(f"no engine {namespace!r} is running")
    click.echo(f"engine {namespace!r} stopped ({len(stopped)} actors); its tasks stay in its store")


@main.command()
@with_engine
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(address: str | None, namespace: str, state_dir: str | None, as_json: bool) -> None:
    """Engine health and task counts by state."""
    from .display import worker_names

    info = _attach(address, namespace, state_dir).status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"engine {info['namespace']}: platform={info['platform']} virtual_time={info['virtual_time']}")
    click.echo(f"  executors={info['executors']} in flight={info['inflight']} ready={info['ready']}")
    click.echo("  " + "  ".join(f"{k}={v}" for k, v in info["counts"].items())
               + (f"  ({info['finished_in_store_only']} finished kept in the store only)"
                  if info.get("finished_in_store_only") else ""))
    click.echo(f"  workers: {worker_names(info['workers'])}")
    if m := info.get("messages"):
        click.echo(f"  scheduler since start: {m.get('enqueue_calls', 0)} enqueue calls, "
                   f"{m.get('commits', 0)} commits, {m.get('submits_sent', 0)} submits, "
                   f"{m.get('reports_received', 0)} reports, "
                   f"{m.get('results_in_answers', 0)} results in submit answers")
    if runs := info.get("runs"):  # the figures the dashboard plots
        starts = runs.get("start_ms", {})
        done = runs.get("finished", {})
        click.echo(f"  runs since start: {runs.get('dispatched', 0)} handed over, "
                   + (", ".join(f"{n} {k}" for k, n in sorted(done.items())) or "none finished")
                   + (f"; latest enqueue -> start p50 {starts['p50']} ms, p99 {starts['p99']} ms "
                      f"({starts['n']} runs)" if starts.get("n") else "")
                   + (f"; {info['stolen']} taken back from busy executors for free slots"
                      if info.get("stolen") else ""))
    heavy = info.get("heavy") or {}
    if heavy.get("pool"):
        click.echo(f"  heavy workers: {heavy['placed']} of {heavy['pool']} placed, {heavy['busy']} busy"
                   + (f", {heavy['pending']} waiting for placement" if heavy.get("pending") else ""))
    if heavy.get("waiting_for"):
        click.echo(f"  heavy tasks are {heavy['waiting_for']}")
    for b in info.get("blocked_executors", []):
        click.echo(f"  {b['kind']} executor {b['executor']}: event loop blocked by {b['worker']} "
                   f"(task {b['task']}) for {b['for_s']} s")
    if info.get("loop_blocks"):
        click.echo("  loops blocked by: " + ", ".join(f"{w} x{n}" for w, n in info["loop_blocks"].items()))
    if info.get("waiting_for"):
        click.echo(f"  {info['waiting_for']}")
    if info.get("quarantined"):
        click.echo(f"  {info['quarantined']} rows quarantined: see `kmpray quarantine`")
    for stop in info.get("stopped_processes", [])[-5:]:  # the newest; all of them with --json
        click.echo(f"  stopped {stop['what']} (pid {stop['pid'] or '?'}): {stop['reason']}")
    for node, state in info.get("nodes", {}).items():
        flags = [k for k in ("charging", "storage_low", "idle", "doze", "roaming") if state.get(k)]
        net = state["network_type"] if state.get("network_connected") else "offline"
        click.echo(f"  node {node[:12]}: network={net} battery={state['battery_level']}% {' '.join(flags)}")


@main.command("list")
@with_engine
@click.option("--state", type=click.Choice([s.value for s in TaskState], case_sensitive=False), default=None)
@click.option("--worker", default=None, metavar="NAME", help="Only the tasks of this worker class.")
@click.option("--limit", type=click.IntRange(min=0), default=LIST_LIMIT, show_default=True,
              help="Show this many, most recently updated first (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: {total, shown, tasks}.")
def list_(address: str | None, namespace: str, state_dir: str | None, state: str | None, worker: str | None,
          limit: int, as_json: bool) -> None:
    """List tasks, most recently updated first, optionally only those in one state or of one worker."""
    from .display import tasks_text

    sched = _attach(address, namespace, state_dir)
    wanted = TaskState(state.upper()) if state else None
    if limit:  # picked on each shard off the table's indexes, as the dashboard's table is
        total, _workers, infos = sched.newest_tasks(wanted, worker, limit)
    else:
        infos = [t for t in sched.list_tasks(wanted) if worker is None or t.worker_class_name == worker]
        infos.sort(key=lambda t: t.updated_at_ms, reverse=True)
        total = len(infos)
    if as_json:
        click.echo(json.dumps({"total": total, "shown": len(infos),
                               "tasks": [t.model_dump(mode="json") for t in infos]}, indent=2))
        return
    click.echo(tasks_text(infos))
    if total > len(infos):  # on stderr: stdout stays the table, for grep and wc
        shown = f"{len(infos)} of {total} tasks shown, the most recently updated (--limit 0: all)"
        click.echo(shown, err=True)


@main.command()
@with_engine
@click.argument("task_id")
def info(address: str | None, namespace: str, state_dir: str | None, task_id: str) -> None:
    """Show one task (or a chain, with its steps' tasks) as JSON."""
    sched = _attach(address, namespace, state_dir)
    found = sched.get_task_info(task_id) or sched.get_chain_info(task_id)
    if found is None:
        raise click.ClickException(f"no task or chain {task_id!r}")
    click.echo(found.model_dump_json(indent=2))


@main.command()
@with_engine
@click.argument("task_id")
def why(address: str | None, namespace: str, state_dir: str | None, task_id: str) -> None:
    """Why a task or chain is (not) running: what it waits for, and the engine's recent decisions."""
    from .client import TaskNotFound

    try:
        click.echo(_attach(address, namespace, state_dir).explain(task_id))
    except TaskNotFound as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@with_engine
@click.argument("task_id")
def cancel(address: str | None, namespace: str, state_dir: str | None, task_id: str) -> None:
    """Cancel a task (and everything that depends on it)."""
    n = _attach(address, namespace, state_dir).cancel(task_id)
    if n == 0:
        raise click.ClickException(f"nothing unfinished under {task_id!r}")
    click.echo(f"cancelled {n}")


@main.command()
@with_engine
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--drop", "drop", default=None, metavar="KEY", help="Delete the quarantined row(s) under KEY.")
def quarantine(address: str | None, namespace: str, state_dir: str | None, as_json: bool, drop: str | None) -> None:
    """Stored rows that did not decode at restore (never decoded again), or drop one."""
    sched = _attach(address, namespace, state_dir)
    if drop is not None:
        n = sched.drop_quarantined(drop)
        if n == 0:
            raise click.ClickException(f"nothing quarantined under {drop!r}")
        click.echo(f"dropped {n}")
        return
    rows = sched.quarantined()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no quarantined rows")
        return
    for row in rows:
        click.echo(f"{row['table']:<7} {row['key']}  {row['size']} bytes  {row['head'][:32]}...  {row['reason']}")


@main.command()
@with_engine
@click.option("--since", type=click.IntRange(min=0), default=None, help="Replay after this cursor (0 = all).")
@click.option("--follow", is_flag=True, help="Keep printing new events until interrupted.")
def events(address: str | None, namespace: str, state_dir: str | None, since: int | None, follow: bool) -> None:
    """Print stored events as JSON lines (cursor first)."""
    sched = _attach(address, namespace, state_dir)
    try:
        sub = sched.events.subscribe(since=0 if since is None and not follow else since)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if follow:  # a supervisor's or `timeout`'s stop ends it as Ctrl-C does (Ray's handler dumped a C stack)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            event = sub.get(timeout_s=1.0 if follow else 0.5)
            if event is None:
                if follow:
                    continue
                break
            click.echo(json.dumps({"cursor": sub.cursor, **event.model_dump(mode="json")}))
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()


@main.command()
@with_engine
@click.option("--port", default=8786, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address; non-loopback needs a token.")
@click.option("--token", envvar="KMPRAY_DASHBOARD_TOKEN", default=None,
              help="Required with every request (env KMPRAY_DASHBOARD_TOKEN); open the page with ?token=...")
def dashboard(address: str | None, namespace: str, state_dir: str | None, port: int, host: str,
              token: str | None) -> None:
    """Serve a live web page over the engine: tasks, chains, plots, events, cancel."""
    try:
        from .dashboard import serve
        from .dashboard.app import is_loopback
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs its extra: pip install 'kmpray[dashboard]' ({exc})") from None
    if not is_loopback(host) and not token:
        raise click.ClickException(f"--host {host} is not loopback: give --token (or KMPRAY_DASHBOARD_TOKEN)")
    sched = _attach(address, namespace, state_dir)
    suffix = f"?token={token}" if token else ""
    click.echo(f"kmpray dashboard for {namespace!r} on http://{host}:{port}/{suffix}  (Ctrl-C stops it)")
    serve(sched, host=host, port=port, token=token)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False,
    short_help="Benchmarks, the load generator, chaos runs.",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the benchmarks, the load generator and the chaos driver (kmpray bench --help)."""
    try:
        from kmpray.bench.__main__ import main as bench_main
    except ImportError as exc:
        raise click.ClickException(f"bench is not installed with this kmpray: {exc}") from None
    sys.exit(bench_main(list(args), prog="kmpray bench"))


if __name__ == "__main__":
    main()
