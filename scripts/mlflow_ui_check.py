#!/usr/bin/env python3
"""Open the MLflow UI in a real headless browser, as a new user would, and check what it shows.

    .venv/bin/python scripts/mlflow_ui_check.py            # screenshots and pages.json under reports/mlflow_ui/

A throwaway SQLite store gets one experiment and run made the way a training job makes them
(``MLflowSink``: ``get_or_create_experiment`` tags the experiment, the run logs loss/total etc. over steps) and
one control experiment made without the project (no ``mlflow.experimentKind``). ``mlflow ui`` serves it on
127.0.0.1 (a free port) and Chromium (``apt-get install chromium``) renders, with a fresh profile each time
(a new user: nothing in localStorage):

  root        the UI's root, what ``mlflow ui`` opens on
  run_page    the run page URL the job summary prints (``run_page()``, port swapped for this server's)
  run_charts  that page's "Model metrics" tab (the charts)
  experiment  the tagged experiment's page (where a click on its name leads), for the record
  control     the untagged control experiment's page: must come out as the GenAI view, else the check could
              not tell the two views apart and proves nothing

What decides the view (MLflow 3.17 UI bundle, mlflow/server/js/build/static/js/main.*.js): the experiment
kind is derived from the sidebar's "GenAI | Model training" switch, the ``workflowType`` of the page's hash
query (``#/...?workflowType=machine_learning``) else the browser's localStorage ``mlflow.workflowType``,
default ``genai``. The ``mlflow.experimentKind`` tag is no longer read (the hook that read it sits behind a
flag that is now always on), so a new user sees the GenAI view unless the URL asks for the other one.

Passes (exit 0) when the run page URL of the summary shows the run, its metrics and the Model training view,
its chart tab draws loss/total, the root renders and lists the experiment, and the control is classified
GenAI. Exit 1: a check failed; 2: no browser or the server did not start. The last line says which.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENT = "adadim-ui-check"
RUN_NAME = "ui-check-run"
METRICS = ("loss/total", "loss/vicreg", "adadim/alpha")
STEPS = 20
ML_QUERY = "workflowType=machine_learning"


def find_browser(explicit: str | None) -> str | None:
    for name in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_store(store: Path) -> dict:
    """The tagged experiment and run, the way a training job makes them, and an untagged control."""
    from mlflow.tracking import MlflowClient

    from adadim_dist.training.tracking import MLflowSink, run_page

    uri = f"sqlite:///{store / 'mlflow.db'}"
    sink = MLflowSink(tracking_uri=uri, experiment=EXPERIMENT, run_name=RUN_NAME, storage_path=store)
    sink.log_params({"model.width": 16, "objective.name": "adadim"})
    for step in range(STEPS):
        sink.log({"loss/total": 5.0 / (step + 1), "loss/vicreg": 4.0 / (step + 1) + 0.1,
                  "adadim/alpha": 0.3 + 0.01 * step}, step=step)
    if sink.close() is False:
        raise RuntimeError("the run's metrics did not reach the store")
    client = MlflowClient(tracking_uri=uri)
    tags = client.get_experiment(sink.experiment_id).tags
    control = client.create_experiment("untagged-control", artifact_location=(store / "control").as_uri())
    control_run = client.create_run(control, run_name="control-run")
    for step in range(STEPS):
        client.log_metric(control_run.info.run_id, "loss/total", 5.0 / (step + 1), step=step)
    client.set_terminated(control_run.info.run_id)
    return {"uri": uri, "experiment_id": sink.experiment_id, "run_id": sink.run_id, "experiment_tags": tags,
            "control_id": control,
            "run_page": run_page(uri, sink.experiment_id, sink.run_id)}


def start_ui(uri: str, port: int, log: Path, timeout_s: float) -> subprocess.Popen:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within {timeout_s:.0f}s (log: {log})")


def stop(proc: subprocess.Popen) -> None:
    """End the server, its job runner and their workers: the process group this script started, nothing else."""
    for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL for what outlives SIGTERM (MLflow's huey consumers)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def render(browser: str, url: str, png: Path, profiles: Path, budget_ms: int) -> str:
    """Screenshot ``url`` into ``png`` and return the rendered DOM, with a fresh browser profile."""
    profile = Path(tempfile.mkdtemp(dir=profiles))
    cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,900",
           f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", "--dump-dom", url]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return result.stdout


def text_of(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


GENAI_HREFS = re.compile(r'href="#/experiments/\d+/(?:judges|chat-sessions|overview/|review-queue|evaluation-runs)')


def view_of(dom: str) -> str:
    """'genai' or 'training': which of the UI's two views rendered (its Docs link and side navigation)."""
    if "mlflow.org/docs/latest/genai/" in dom or GENAI_HREFS.search(dom) or "Token Usage" in dom:
        return "genai"
    if "mlflow.org/docs/latest/ml/" in dom:
        return "training"
    return "unknown"


def title_of(dom: str) -> str:
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    return html.unescape(match.group(1)).strip() if match else ""


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url.split("#", 1)[-1] else "?") + query


def charts_url(run_url: str) -> str:
    base, _, query = run_url.partition("?")
    return base.rstrip("/") + "/model-metrics" + (f"?{query}" if query else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "mlflow_ui", help="screenshots go here")
    parser.add_argument("--browser", help="Chromium executable (default: chromium on PATH)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="Chromium --virtual-time-budget per page")
    parser.add_argument("--server-timeout", type=float, default=240.0, help="seconds for mlflow ui to come up")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and browser profiles")
    args = parser.parse_args()

    browser = find_browser(args.browser)
    if browser is None:
        print("mlflow UI check: SETUP - no Chromium on PATH (apt-get install chromium)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mlflow-ui-check-"))
    (tmp / "profiles").mkdir()
    proc = None
    try:
        try:
            store = make_store(tmp)
            port = free_port()
            proc = start_ui(store["uri"], port, tmp / "mlflow_ui.log", args.server_timeout)
        except Exception as err:  # noqa: BLE001 - one line, not a traceback
            print(f"mlflow UI check: SETUP - {type(err).__name__}: {err}")
            return 2
        base = f"http://127.0.0.1:{port}"
        printed = store["run_page"]
        if not printed.startswith("http://127.0.0.1:5000/"):
            print(f"mlflow UI check: FAIL - run_page() for a SQLite store is {printed}, not on mlflow ui's "
                  "default http://127.0.0.1:5000")
            return 1
        run_url = base + printed[len("http://127.0.0.1:5000"):]
        pages = {
            "root": base + "/",
            "run_page": run_url,
            "run_charts": charts_url(run_url),
            "experiment": f"{base}/#/experiments/{store['experiment_id']}",
            "control": f"{base}/#/experiments/{store['control_id']}",
        }
        seen: dict[str, dict] = {}

        def visit(name: str, url: str, ready) -> dict:
            dom = ""
            for budget in (args.budget_ms, 2 * args.budget_ms, 4 * args.budget_ms):  # a loaded machine: longer
                dom = render(browser, url, args.out / f"{name}.png", tmp / "profiles", budget)
                if ready(dom):
                    break
            info = {"url": url, "title": title_of(dom), "view": view_of(dom), "text": text_of(dom)[:600],
                    "screenshot": str(args.out / f"{name}.png"), "dom": dom}
            seen[name] = info
            print(f"{name:<10} {info['view']:<8} {info['title']!r:<45} {url}")
            return info

        rendered = lambda dom: view_of(dom) != "unknown" and " - MLflow" in title_of(dom)  # noqa: E731
        problems: list[str] = []

        root = visit("root", pages["root"], lambda d: rendered(d) and EXPERIMENT in d)
        if not (root["title"].startswith("Home") and EXPERIMENT in text_of(root["dom"])):
            problems.append(f"the root did not render the home page listing {EXPERIMENT} ({root['title']!r})")

        def run_page_problems(info: dict) -> list[str]:
            text, out = text_of(info["dom"]), []
            if RUN_NAME not in text or not info["title"].startswith("Run "):
                out.append(f"no run page for {RUN_NAME} ({info['title']!r})")
            missing = [key for key in METRICS if key not in text]
            if missing or not re.search(r"Metrics \(\d+\)", text):
                out.append(f"metrics missing from the run page: {missing or 'the Metrics table'}")
            if info["view"] != "training":
                out.append(f"the run page opens in the {info['view']} view, not Model training")
            return out

        run = visit("run_page", pages["run_page"], lambda d: rendered(d) and RUN_NAME in d)
        run_problems = run_page_problems(run)
        problems += run_problems
        charts = visit("run_charts", pages["run_charts"], lambda d: rendered(d) and f"{RUN_NAME} (loss/total)" in d)
        if f"{RUN_NAME} (loss/total)" not in text_of(charts["dom"]):
            problems.append("the run's Model metrics tab drew no loss/total chart")
        experiment = visit("experiment", pages["experiment"], rendered)
        control = visit("control", pages["control"], rendered)
        if control["view"] != "genai":
            problems.append(f"the untagged control came out {control['view']}, not genai: the check cannot tell "
                            "the views apart")
        hint = ""
        if any("view, not Model training" in p for p in run_problems) and ML_QUERY not in run_url:
            fixed = visit("run_page_fixed", with_query(run_url, ML_QUERY), lambda d: rendered(d) and RUN_NAME in d)
            if not run_page_problems(fixed):
                hint = f" (the same URL with ?{ML_QUERY} passes: run_page() should append it)"

        summary = {"mlflow_ui": base, "experiment_tags": store["experiment_tags"],
                   "printed_run_page": printed, "problems": problems,
                   "pages": {k: {x: v[x] for x in ("url", "title", "view", "screenshot", "text")}
                             for k, v in seen.items()}}
        (args.out / "pages.json").write_text(json.dumps(summary, indent=2) + "\n")
        kind = store["experiment_tags"].get("mlflow.experimentKind")
        print(f"tagged experiment: mlflow.experimentKind={kind!r}, its page opens in the {experiment['view']} view; "
              f"untagged control: {control['view']} view; screenshots: {args.out}")
        if problems:
            print("mlflow UI check: FAIL - " + "; ".join(problems) + hint)
            return 1
        print(f"mlflow UI check: OK - the summary's run page shows {RUN_NAME}'s metrics and charts in the Model "
              f"training view; the untagged control shows GenAI ({args.out})")
        return 0
    finally:
        if proc is not None:
            stop(proc)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
