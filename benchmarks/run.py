"""The benchmarks of issues 6 and 16, each figure next to its baseline, measured in one run on this machine.

    python benchmarks/run.py            # or: make bench        (5-10 minutes on 2 cores)
    python benchmarks/run.py --quick    # fewer repetitions, 1,000 polls instead of 10,000, a backfill of
                                        # 3,000 incidents instead of 20,000 (a smoke run)

Prints the machine, a table and the JSON, and writes the JSON to benchmarks/results.json.

Everything talks to real HTTP servers on 127.0.0.1: tests/replay.py's ReplayServer runs in processes of its
own (benchmarks/_replay.py), so rendering the replayed pages never competes with the measured process for
the GIL and its memory never counts as ours. Process figures are the median of several interleaved runs
(hyperfine style: baseline, subject, baseline, subject, ...) after one warm-up run each. Bytecode is cached
in a temporary PYTHONPYCACHEPREFIX for every child (baseline and monitor alike), as an installed package
would have it, even when PYTHONDONTWRITEBYTECODE is set in the calling shell.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _workers import median, proc_rss_mb  # noqa: E402
ROOT = HERE.parent
PY = sys.executable
BARE_IMPORT = "import httpx, feedparser, sqlalchemy, apscheduler"
BIG_N = 20_000
BIG_MAX_MB = 256          # bench config only: incidents.json of 20,000 incidents is ~42 MB (product default: 10)
LATENCY_INTERVAL = 2.0
MEM_NOW = "2024-08-19T19:00:00Z"   # an upload incident (major) is open: both notifiers of the memory run send
SLACK_URL = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
R2E_REFERENCE = {"wall_s": 0.13, "rss_mb": 30.0}   # the figure users quote for rss2email's unchanged poll

METHOD = {
    "process figures": "wall time of the whole process (spawn to exit, os.wait4 also gives CPU and peak RSS), "
                       "median of interleaved runs in random order after one warm-up run each",
    "unchanged poll": "`monitor --config C poll` against the replayed status.openai.com history (StatuspagePage "
                      "with ETags) after a first poll stored it: two conditional GETs, both 304",
    "cpu per poll": "one process runs Service.lead (the leader check, once per interval as in `monitor run`) and "
                    "Service.poll_job (the daemon's job: poll_page, its log line, sd_notify, the web counters) "
                    "interleaved with one bare httpx.AsyncClient GET of the same incidents.json (200, gzip, reused "
                    "client) and one conditional GET (304); median time.process_time per call; the replay server "
                    "runs in another process",
    "daemon cpu": "two real `monitor run` processes (poll_interval 1 s, and 3600 s = idle), CPU ticks from "
                  "/proc/PID/stat over the same window, (active - idle) / polls",
    "memory": "`monitor run` itself in one process (cli -> service.run -> APScheduler -> Service.poll_job) on a "
              "fresh store, with only the poll_interval forced to 0.01 s (the config minimum of 1 s would take "
              "3 hours); RSS from /proc/self/status after poll 1, 10, 100 and every 1,000. Two notifiers for "
              "every incident: Slack (slack://, apprise's webhook host replaced by a receiver on 127.0.0.1 in "
              "that process) and e-mail (mailto:// to aiosmtpd on 127.0.0.1); the replayed page shows an open "
              f"upload incident ({MEM_NOW}), so both send once. 'memory by part': RSS after importing each "
              "part in turn in a fresh process, then after loading the notifiers, then after apprise's lookup "
              "of every plugin",
    "first poll": "poll_all() in a fresh process on a freshly migrated store (migration not timed); page: "
                  "StatuspagePage(synthetic_incidents(20000, seed=1), api_limit=20000), history ending a day ago; "
                  f"bench config max_response_mb={BIG_MAX_MB} (product default stays 10 MB: real pages serve 25-50 "
                  "incidents). Baseline: urllib GET of the same gzip incidents.json + json.loads + sqlite3 (WAL, "
                  "synchronous=NORMAL) inserting the incidents and their updates in one transaction",
    "history": "`monitor history --json [--all]` over the store of that first poll (stdout to a file); "
               "in-process = the command run after its imports; baseline = the interpreter alone (python -c pass)",
    "status": "`monitor status` on fresh data (the openai store right after a poll: answered from the store, "
              "no request) against the interpreter alone",
    "backfill": "`monitor backfill --since <first incident>` (process wall, on a freshly migrated store, "
                "migration not timed) of an incident.io page serving synthetic_incidents(N, ids='ulid') with "
                "window lists that carry each incident's updates (_replay.py --list-updates 1); requests "
                "counted by the server. Baseline (process wall too): urllib GET of the same 90-day windows + "
                "json.loads + sqlite3 inserting incidents and updates in one transaction (a timeline GET only for "
                "an entry without updates); allowed requests = windows + such entries",
    "latency": "`monitor run`, poll_interval 2 s, json:// notifier (tags ['*']) to a capture server in the bench "
               "process; the replay clock is moved to the next real update at a random point of the poll cycle; "
               "latency = POST arrival - the moment before the clock change",
    "bytes": "bytes the replay server wrote (status line, headers, body) per idle poll, counted server-side; "
             "full = the same URLs fetched without validators, gzip offered as the monitor does",
}

# ---------------------------------------------------------------------------------------------- helpers


def monitor_cmd() -> list[str]:
    script = Path(PY).parent / "monitor"
    return [str(script)] if script.exists() else [PY, "-c", "from monitor.cli import main; main()"]


def child_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("MONITOR_CONFIG", None)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pyc")
    return env


class Proc:
    """Result of one child process: wall time, CPU, peak RSS (from wait4), exit code."""

    def __init__(self, wall, cpu, maxrss_mb, rc, stdout_path, stderr_path):
        self.wall, self.cpu, self.maxrss_mb, self.rc = wall, cpu, maxrss_mb, rc
        self.stdout_path, self.stderr_path = stdout_path, stderr_path

    def stdout(self) -> str:
        return Path(self.stdout_path).read_text(errors="replace") if self.stdout_path else ""

    def stderr(self) -> str:
        return Path(self.stderr_path).read_text(errors="replace")


def run_proc(cmd, env, tmp: Path, *, keep_stdout=False, check=True, timeout=900) -> Proc:
    fd_out, out_path = tempfile.mkstemp(dir=tmp, prefix="out-")
    fd_err, err_path = tempfile.mkstemp(dir=tmp, prefix="err-")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=fd_out, stderr=fd_err, stdin=subprocess.DEVNULL, env=env, cwd=tmp)
    os.close(fd_out)
    os.close(fd_err)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
        time.sleep(0.002)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    res = Proc(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, p.returncode,
               out_path if keep_stdout else None, err_path)
    if check and res.rc != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {res.rc}:\n{res.stderr()[-3000:]}")
    if not keep_stdout:
        os.unlink(out_path)
    return res


def worker(name: str, env, tmp: Path, timeout=900, **kw) -> dict:
    """Run one in-process measurement (benchmarks/_workers.py) in a child process of its own; it prints one
    JSON line. Imported as a module, so that its bytecode is cached and compiling it costs no memory."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import _workers; _workers.main()"
    p = run_proc([PY, "-c", code, name, json.dumps(kw)], env, tmp, keep_stdout=True, timeout=timeout)
    out = json.loads(p.stdout().strip().splitlines()[-1])
    out["_process"] = {"wall_s": p.wall, "cpu_s": p.cpu, "maxrss_mb": p.maxrss_mb}
    return out


class Server:
    """benchmarks/_replay.py in a child process."""

    def __init__(self, tmp: Path, env, *args: str):
        self.err = open(tmp / f"server-{args[0]}-{os.getpid()}-{random.randrange(1 << 30)}.log", "wb")
        self.p = subprocess.Popen([PY, str(HERE / "_replay.py"), *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err, env=env, cwd=tmp)
        self.info = None
        self.error = None

    def ready(self) -> "Server":
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("replay server failed: " + Path(self.err.name).read_text()[-2000:])
        self.info = json.loads(line)
        self.base_url = self.info["base_url"]
        return self

    def control(self, path: str) -> dict:
        with urllib.request.urlopen(self.base_url + path, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
                self.p.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self.err.close()


def write_config(path: Path, db: Path, pages: list[dict], notifiers: list[dict] = (), level="info") -> Path:
    def val(v):
        return json.dumps(v)

    lines = [f'[database]\nurl = "sqlite:///{db}"\n', f'[log]\nlevel = "{level}"\n']
    for p in pages:
        lines.append("[[pages]]")
        lines += [f"{k} = {val(v)}" for k, v in p.items()]
        lines.append("")
    for n in notifiers:
        lines.append("[[notifiers]]")
        lines += [f"{k} = {val(v)}" for k, v in n.items()]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    osname = platform.platform()
    try:
        rel = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        osname = rel.get("PRETTY_NAME", "").strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    pkgs = {}
    for name in ("httpx", "feedparser", "SQLAlchemy", "alembic", "APScheduler", "apprise", "pydantic", "click"):
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pkgs[name] = None
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "os": osname, "packages": pkgs}


# --------------------------------------------------------------------------------- notification capture


class Capture:
    """A json:// endpoint on 127.0.0.1 noting when each POST arrives."""

    def __init__(self):
        self.arrivals: list[float] = []
        self.cond = threading.Condition()
        cap = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                t = time.perf_counter()
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with cap.cond:
                    cap.arrivals.append(t)
                    cap.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"json://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def count(self) -> int:
        with self.cond:
            return len(self.arrivals)

    def wait_beyond(self, n: int, timeout: float) -> float | None:
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals) <= n:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.arrivals[n]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ----------------------------------------------------------------------------------------- measurements


def bench(args) -> dict:
    quick = args.quick
    reps = 3 if quick else args.reps
    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    env = child_env(tmp)
    mon = monitor_cmd()
    if args.wait_quiet:
        end = time.monotonic() + args.wait_quiet
        while os.getloadavg()[0] > 1.0 and time.monotonic() < end:
            time.sleep(5)
    t_start = time.perf_counter()
    res: dict = {"machine": machine(), "run": {"started": datetime.now().astimezone().isoformat(timespec="seconds"),
                                                  "quick": quick, "repetitions": reps,
                                                  "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}}
    log = lambda m: print(f"[{time.perf_counter() - t_start:6.1f} s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    servers: list[Server] = []
    rows = {}
    try:
        log("starting replay servers (the 20,000-incident page is rendered and gzipped once, up front)")
        s_openai = Server(tmp, env, "openai", "--memo")
        s_big = Server(tmp, env, "synthetic", "--n", str(BIG_N), "--memo", "--warm", "/api/v2/incidents.json",
                       "--warm", "/history.atom", "--warm", "/api/v2/components.json")
        s_io0 = Server(tmp, env, "incidentio", "--etags", "0")
        s_io1 = Server(tmp, env, "incidentio", "--etags", "1")
        s_lat = Server(tmp, env, "openai")
        s_mem = Server(tmp, env, "openai", "--memo", "--now", MEM_NOW)
        n_backfill = 3000 if quick else BIG_N
        s_back = Server(tmp, env, "incidentio-synthetic", "--n", str(n_backfill), "--memo", "--list-updates", "1")
        servers += [s_openai, s_big, s_io0, s_io1, s_lat, s_mem, s_back]
        for s in servers:
            try:
                s.ready()
            except RuntimeError as exc:
                if s is not s_back:
                    raise
                s.error = str(exc).strip().splitlines()[-1]   # the replay mode is missing: no backfill figure
        log(f"servers ready; {s_big.info['incidents']} incidents on the big page")

        page = {"name": "openai", "base_url": s_openai.base_url}
        c_poll = write_config(tmp / "poll.toml", tmp / "poll.db", [page])

        # -- 1+2: --help and one unchanged poll, each next to the bare import (interleaved) -----------------
        bare_cmd = [PY, "-c", BARE_IMPORT]
        help_cmd = mon + ["--help"]
        poll_cmd = mon + ["--config", str(c_poll), "poll"]
        run_proc(poll_cmd, env, tmp)          # first poll: stores the page (not measured)
        # the peer, interleaved with ours: rss2email's unchanged run of the same page's feed (the bench extra
        # installs it beside the monitor)
        r2e = args.r2e or os.environ.get("R2E") or shutil.which("r2e") or str(Path(PY).with_name("r2e"))
        peer = {"reference": R2E_REFERENCE, "measured": None}
        r2e_cmd, r2es = None, []
        if os.path.exists(r2e) or shutil.which(r2e):
            try:
                base = ["--config", str(tmp / "r2e.cfg"), "--data", str(tmp / "r2e.json")]
                run_proc([r2e, *base, "new", "bench@example.org"], env, tmp)
                run_proc([r2e, *base, "add", "openai", s_openai.base_url + "/history.atom"], env, tmp)
                run_proc([r2e, *base, "run", "--no-send"], env, tmp)
                r2e_cmd = [r2e, *base, "run", "--no-send"]
                peer["version"] = run_proc([r2e, "--version"], env, tmp, keep_stdout=True).stdout().strip()
            except Exception as exc:  # the peer is optional
                peer["error"] = str(exc)[:300]
        for cmd in (bare_cmd, help_cmd, poll_cmd) + ((r2e_cmd,) if r2e_cmd else ()):
            run_proc(cmd, env, tmp)           # warm-up: bytecode cache, page cache
        bare, helps, polls = [], [], []
        order = [(bare_cmd, bare), (help_cmd, helps), (poll_cmd, polls)] + ([(r2e_cmd, r2es)] if r2e_cmd else [])
        for i in range(reps * 2 if not quick else reps):
            random.shuffle(order)
            for cmd, acc in order:
                acc.append(run_proc(cmd, env, tmp))
        b = median([p.wall for p in bare])
        res["startup"] = {
            "bare_import": {"wall_s": [round(p.wall, 4) for p in bare], "median_s": b,
                            "maxrss_mb": median([p.maxrss_mb for p in bare])},
            "help": {"wall_s": [round(p.wall, 4) for p in helps], "median_s": median([p.wall for p in helps]),
                     "maxrss_mb": median([p.maxrss_mb for p in helps])},
            "unchanged_poll": {"wall_s": [round(p.wall, 4) for p in polls],
                               "median_s": median([p.wall for p in polls]),
                               "cpu_s": median([p.cpu for p in polls]),
                               "maxrss_mb": median([p.maxrss_mb for p in polls]),
                               "output": run_proc(poll_cmd, env, tmp, keep_stdout=True).stdout().strip()},
        }
        h, pw = res["startup"]["help"]["median_s"], res["startup"]["unchanged_poll"]["median_s"]
        rows["help"] = ("`monitor --help` wall time", f"{h * 1e3:.0f} ms", f"bare import {b * 1e3:.0f} ms",
                        h / b, "<= 1.5x", h / b <= 1.5)
        rows["poll"] = ("unchanged poll, process wall (`monitor poll`)", f"{pw * 1e3:.0f} ms",
                        f"bare import {b * 1e3:.0f} ms", pw / b, "<= 2.5x", pw / b <= 2.5)
        log(f"startup: bare {b:.3f} s, --help {h:.3f} s, unchanged poll {pw:.3f} s")

        # -- the peer: rss2email's unchanged poll of the same page's feed, measured above, interleaved ------
        if r2es:
            peer["measured"] = {"version": peer.get("version"), "wall_s": median([p.wall for p in r2es]),
                                "maxrss_mb": median([p.maxrss_mb for p in r2es]),
                                "how": "r2e run --no-send on the replayed /history.atom (2nd+ run), interleaved "
                                       "with ours"}
            pm, rm = peer["measured"], res["startup"]["unchanged_poll"]["maxrss_mb"]
            t_ratio, m_ratio = pw / pm["wall_s"], rm / pm["maxrss_mb"]
            rows["peer"] = ("unchanged poll against rss2email (`r2e run`), wall and peak RSS",
                            f"{pw * 1e3:.0f} ms, {rm:.0f} MB", f"r2e {pm['wall_s'] * 1e3:.0f} ms, {pm['maxrss_mb']:.0f} MB",
                            t_ratio, f"<= 2x time and memory (memory {m_ratio:.2f}x)", t_ratio <= 2 and m_ratio <= 2)
        res["peer_rss2email"] = peer
        log(f"peer: {peer.get('measured') or peer}")

        # -- 3: CPU per unchanged poll in the daemon's poll path, against a bare GET ----------------------
        n_cpu = 100 if quick else 400
        cpu = worker("cpu", env, tmp, config=str(c_poll), warm=20, n=n_cpu,
                     get_url=s_openai.base_url + "/api/v2/incidents.json")
        res["cpu_per_poll"] = cpu
        r = cpu["poll_cpu_ms"] / cpu["get_cpu_ms"]
        rows["cpu"] = ("CPU per unchanged poll (in-process, Service.lead + poll_job)", f"{cpu['poll_cpu_ms']:.1f} ms",
                       f"bare httpx GET {cpu['get_cpu_ms']:.1f} ms", r, "<= 2x", r <= 2)
        log(f"cpu: poll {cpu['poll_cpu_ms']:.2f} ms, GET {cpu['get_cpu_ms']:.2f} ms, 304 GET {cpu['get304_cpu_ms']:.2f} ms")

        # -- 3b: the same in the real daemon: `monitor run` with poll_interval=1, CPU from /proc, minus idle --
        res["daemon_cpu"] = daemon_cpu(mon, env, tmp, s_openai, window=8 if quick else 15)
        log(f"daemon: {res['daemon_cpu']}")

        # -- 7: memory over 10,000 polls -----------------------------------------------------------------
        n_mem = 1000 if quick else 10_000
        res["memory"] = mem = memory(env, tmp, s_mem, n_mem)
        series = {int(k): v for k, v in mem["rss_mb"].items()}
        first_rss, last_rss = series[1], series[n_mem]
        grow = last_rss - first_rss
        sent = f"; sent: Slack {mem['slack_posts']}, e-mail {mem['mails']}"
        rows["mem"] = (f"`monitor run` RSS after {n_mem:,} polls, Slack + e-mail notifiers",
                       f"{last_rss:.1f} MB (+{grow:.1f})", f"after 1st poll {first_rss:.1f} MB", None,
                       "<= 80 MB, grows < 5 MB", grow < 5 and last_rss <= 80 and mem["slack_posts"] > 0
                       and mem["mails"] > 0)
        log(f"memory: {first_rss:.1f} -> {last_rss:.1f} MB over {n_mem} polls in {mem['seconds']:.0f} s{sent}")
        res["memory_by_part"] = worker("memparts", env, tmp, config=mem["config"])["parts"]
        log("memory by part: " + "; ".join(f"{p['part']} +{p['rss_added_mb']}" for p in res["memory_by_part"]))

        # -- 4: first poll of a page with 20,000 incidents, against json + sqlite3 ------------------------
        big_page = {"name": "big", "base_url": s_big.base_url, "max_response_mb": BIG_MAX_MB, "deadline": 600}
        bases, firsts = [], []
        for i in range(reps):
            bases.append(worker("firstbase", env, tmp, url=s_big.base_url + "/api/v2/incidents.json",
                                db=str(tmp / f"base{i}.db")))
        budget = 60 if quick else 90
        t0 = time.perf_counter()
        for i in range(min(reps, 3)):
            t1 = time.perf_counter()
            cfg = write_config(tmp / f"big{i}.toml", tmp / f"big{i}.db", [big_page])
            firsts.append(worker("first", env, tmp, timeout=1200, config=str(cfg)))
            if time.perf_counter() - t0 + (time.perf_counter() - t1) > budget:
                break      # slow: fewer repetitions rather than a run of more than 10 minutes
        ours, base = median([f["wall_s"] for f in firsts]), median([x["wall_s"] for x in bases])
        ours_cpu, base_cpu = median([f["cpu_s"] for f in firsts]), median([x["cpu_s"] for x in bases])
        res["first_poll_20k"] = {"ours": firsts, "baseline": bases, "ours_median_s": ours, "baseline_median_s": base,
                                 "ours_cpu_s": ours_cpu, "baseline_cpu_s": base_cpu, "cpu_ratio": ours_cpu / base_cpu,
                                 "max_response_mb_in_bench_config": BIG_MAX_MB}
        rows["first"] = (f"first poll, {BIG_N:,} incidents ({bases[0]['json_mb']:.0f} MB JSON), wall",
                         f"{ours:.1f} s (CPU {ours_cpu:.1f}, {median([f['peak_rss_mb'] for f in firsts]):.0f} MB)",
                         f"json+sqlite3 {base:.1f} s (CPU {base_cpu:.1f}, "
                         f"{median([x['peak_rss_mb'] for x in bases]):.0f} MB)",
                         ours / base, "<= 6x", ours / base <= 6)
        log(f"first poll 20k: ours {ours:.1f} s ({len(firsts)} runs), baseline {base:.2f} s")

        # -- 5: history over that store -------------------------------------------------------------------
        c_big = tmp / "big0.toml"
        floor_cmd = [PY, "-c", "pass"]
        run_proc(floor_cmd, env, tmp)
        floors, hist = [], {}
        for label, extra in (("all", ["--all"]), ("default", [])):
            cmd = mon + ["--config", str(c_big), "history", "--json", *extra]
            one = run_proc(cmd, env, tmp, keep_stdout=True)
            n_rows = len(json.loads(one.stdout()))
            runs = []
            for _ in range(3 if quick else 5):
                runs.append(run_proc(cmd, env, tmp))
                floors.append(run_proc(floor_cmd, env, tmp).wall)
            inproc = [worker("history", env, tmp, config=str(c_big), args=extra)["seconds"] for _ in range(2)]
            hist[label] = {"wall_s": [round(p.wall, 3) for p in runs], "median_s": median([p.wall for p in runs]),
                           "in_process_s": median(inproc), "rows": n_rows,
                           "maxrss_mb": median([p.maxrss_mb for p in runs])}
        # the same `history` with an ntfy notifier configured: read commands never load apprise (issue 24)
        c_ntfy = write_config(tmp / "big_ntfy.toml", tmp / "big0.db", [big_page],
                              [{"name": "phone", "url": "ntfy://127.0.0.1:9/uploads"}])
        h_plain, h_ntfy = [], []
        for _ in range(3 if quick else 5):
            h_plain.append(run_proc(mon + ["--config", str(c_big), "history"], env, tmp))
            h_ntfy.append(run_proc(mon + ["--config", str(c_ntfy), "history"], env, tmp))
        hist["ntfy"] = {"plain_s": median([p.wall for p in h_plain]), "ntfy_s": median([p.wall for p in h_ntfy]),
                        "plain_mb": median([p.maxrss_mb for p in h_plain]),
                        "ntfy_mb": median([p.maxrss_mb for p in h_ntfy])}
        hn = hist["ntfy"]
        rows["hist_ntfy"] = ("`history` with an ntfy notifier, process wall", f"{hn['ntfy_s']:.2f} s, "
                             f"{hn['ntfy_mb']:.0f} MB", f"without {hn['plain_s']:.2f} s, {hn['plain_mb']:.0f} MB",
                             hn["ntfy_s"] / hn["plain_s"], "<= 1.1x", hn["ntfy_s"] <= 1.1 * hn["plain_s"])
        hist["interpreter_s"] = fl = median(floors)
        res["history"] = hist
        ha, hd = hist["all"]["median_s"], hist["default"]["median_s"]
        rows["hist_all"] = (f"`history --json --all` ({hist['all']['rows']:,} rows), process wall",
                            f"{ha:.2f} s (in-process {hist['all']['in_process_s']:.2f})", f"python alone {fl:.2f} s",
                            None, "<= 1.0 s", ha <= 1.0)
        rows["hist_def"] = (f"`history --json` upload-related ({hist['default']['rows']:,} rows), process wall",
                            f"{hd:.2f} s (in-process {hist['default']['in_process_s']:.2f})",
                            f"python alone {fl:.2f} s", None, "<= 0.5 s", hd <= 0.5)
        log(f"history: all {ha:.2f} s, default {hd:.2f} s, interpreter {fl:.2f} s")

        # -- 5b: `monitor status` on fresh data ----------------------------------------------------------
        st_cmd = mon + ["--config", str(c_poll), "status"]
        run_proc(poll_cmd, env, tmp)                  # fresh: the answer comes from the store
        answer = json.loads(run_proc(st_cmd + ["--json"], env, tmp, keep_stdout=True).stdout())
        st_runs, st_floor = [], []
        for _ in range(3 if quick else 5):
            st_runs.append(run_proc(st_cmd, env, tmp))
            st_floor.append(run_proc(floor_cmd, env, tmp).wall)
        sw = median([p.wall for p in st_runs])
        res["status"] = {"wall_s": [round(p.wall, 3) for p in st_runs], "median_s": sw,
                         "interpreter_s": median(st_floor), "maxrss_mb": median([p.maxrss_mb for p in st_runs]),
                         "verdict": answer["verdict"], "polled_now": [p["polled_now"] for p in answer["pages"]]}
        rows["status"] = ("`monitor status` on fresh data, process wall", f"{sw:.2f} s",
                          f"python alone {median(st_floor):.2f} s", None, "<= 0.5 s",
                          sw <= 0.5 and not any(res["status"]["polled_now"]))
        log(f"status: {sw:.2f} s ({answer['verdict']}, polled now: {res['status']['polled_now']})")

        # -- 5c: `monitor status` on the 20,000-incident store while an upload incident is open: the estimate
        # reads every resolved incident of the page (issue 23)
        res["status_20k"] = st20 = status_big(mon, env, tmp, c_big, tmp / "big0.db", reps=3 if quick else 5)
        rows["status_20k"] = (f"`monitor status` with an incident open, {BIG_N:,} incidents stored, process wall",
                              f"{st20['median_s']:.2f} s", st20["estimate"] or "no estimate", None, "<= 0.5 s",
                              st20["median_s"] <= 0.5 and st20["estimate"] is not None)
        log(f"status on 20k with an open incident: {st20['median_s']:.2f} s, estimate {st20['estimate']}")

        # -- 9: backfill through the window lists, against json + sqlite3 ---------------------------------
        res["backfill"] = bf = backfill(mon, env, tmp, s_back, reps=1 if quick else 2)
        if bf.get("error"):
            rows["backfill"] = (f"backfill of {n_backfill:,} incidents (window lists), wall", "not measured",
                                bf["error"][:60], None, "<= 4x; requests <= allowed", None)
        else:
            ratio = bf["ours_median_s"] / bf["baseline_median_s"]
            rows["backfill"] = (f"backfill of {bf['incidents']:,} incidents (window lists), wall",
                                f"{bf['ours_median_s']:.1f} s, {bf['ours_requests']:,} requests",
                                f"json+sqlite3 {bf['baseline_median_s']:.1f} s, {bf['windows']} windows",
                                ratio, f"<= 4x; requests <= {bf['allowed_requests']:,}",
                                ratio <= 4 and bf["ours_requests"] <= bf["allowed_requests"])
        log(f"backfill: {bf}")

        # -- 6: detection latency -------------------------------------------------------------------------
        lat = latency(mon, env, tmp, s_lat, changes=3 if quick else 8)
        res["latency"] = lat
        ok = lat["max_s"] is not None and lat["max_s"] <= LATENCY_INTERVAL + 1 and not lat["missed"]
        rows["latency"] = ("detection latency, change -> POST (median / max)",
                           f"{lat['median_s']:.2f} / {lat['max_s']:.2f} s" if lat["max_s"] is not None else "n/a",
                           f"interval {LATENCY_INTERVAL:g} s", None, f"<= {LATENCY_INTERVAL + 1:g} s", ok)
        log(f"latency: {lat}")

        # -- 8: bytes per idle poll ----------------------------------------------------------------------
        res["bytes"] = {}
        for label, srv, kind in (("statuspage (ETags)", s_openai, "statuspage"),
                                 ("incident.io etags=False", s_io0, "incidentio"),
                                 ("incident.io etags=True", s_io1, "incidentio")):
            cfg = write_config(tmp / f"bytes-{kind}-{len(res['bytes'])}.toml", tmp / f"bytes{len(res['bytes'])}.db",
                               [{"name": "p", "base_url": srv.base_url, "kind": kind,
                                 "proxy_host": "status.openai.com", "history_days": 30}])
            res["bytes"][label] = worker("bytes", env, tmp, config=str(cfg), control=srv.base_url, polls=5)
        for label, bb in res["bytes"].items():
            supports = bool(bb["paths_server_can_304"])
            met = bb["all_304_where_possible"] if supports else None
            rows[f"bytes {label}"] = (f"bytes per idle poll, {label}", f"{bb['idle_bytes_per_poll']:,.0f} B",
                                      f"full {bb['full_bytes_per_poll']:,.0f} B",
                                      bb["idle_bytes_per_poll"] / bb["full_bytes_per_poll"],
                                      "304s where the server allows" if supports else "304s (server sends none)",
                                      met)
        log("bytes: " + "; ".join(f"{k}: {v['idle_bytes_per_poll']:.0f}/{v['full_bytes_per_poll']:.0f}"
                                  for k, v in res["bytes"].items()))
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    res["run"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["method"] = METHOD
    res["table"] = [{"id": k, "figure": f, "ours": o, "baseline": bl, "ratio": None if r is None else round(r, 2),
                     "target": t, "met": m} for k, (f, o, bl, r, t, m) in rows.items()]
    res["run"]["seconds"] = round(time.perf_counter() - t_start, 1)
    return res


def status_big(mon, env, tmp: Path, cfg: Path, db: Path, reps: int) -> dict:
    """`monitor status` on the big store, fresh (one unchanged poll first), with its newest incident made an open
    upload incident 10 minutes old, so that the answer waits and estimates from 20,000 resolved incidents."""
    run_proc(mon + ["--config", str(cfg), "poll"], env, tmp, check=False)
    now = datetime.utcnow()
    con = sqlite3.connect(db)
    with con:
        (iid,) = con.execute("SELECT id FROM incidents ORDER BY started_at DESC LIMIT 1").fetchone()
        con.execute("UPDATE incidents SET status = 'investigating', resolved_at = NULL, started_at = ? WHERE id = ?",
                    ((now - timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S.000000"), iid))
        con.execute("INSERT OR IGNORE INTO tags (incident_id, tag, rule, field, text) "
                    "VALUES (?, 'file-upload', 'bench', 'title', 'bench')", (iid,))
        con.execute("UPDATE pages SET last_success_at = ?, consecutive_failures = 0",
                    (now.strftime("%Y-%m-%d %H:%M:%S.000000"),))
    con.close()
    cmd = mon + ["--config", str(cfg), "status"]
    answer = json.loads(run_proc(cmd + ["--json"], env, tmp, keep_stdout=True, check=False).stdout())
    runs = [run_proc(cmd, env, tmp, check=False) for _ in range(reps)]
    est = next((i.get("expected_resolution") for i in answer["incidents"] if i.get("expected_resolution")), None)
    return {"wall_s": [round(p.wall, 3) for p in runs], "median_s": median([p.wall for p in runs]),
            "verdict": answer["verdict"], "estimate": f"{est['cases']} {est['class']}" if est else None}


def memory(env, tmp: Path, srv: Server, n: int) -> dict:
    """`monitor run` (the mem worker) with a Slack and an e-mail notifier for every incident, both on
    127.0.0.1: a receiver for Slack's webhook POSTs and aiosmtpd."""
    sys.path.insert(0, str(ROOT / "tests"))
    from notify_servers import SMTPServer

    slack = Capture()
    try:
        with SMTPServer() as smtp:
            cfg = write_config(tmp / "mem.toml", tmp / "mem.db", [{"name": "openai", "base_url": srv.base_url}],
                               [{"name": "slack", "url": SLACK_URL, "tags": ["*"]},
                                {"name": "email", "url": smtp.url(), "tags": ["*"]}])
            port = slack.httpd.server_address[1]
            out = worker("mem", env, tmp, timeout=900, config=str(cfg), n=n, interval=0.01,
                         slack_webhook=f"http://127.0.0.1:{port}/services")
            out.update(config=str(cfg), slack_posts=slack.count(), mails=len(smtp.mails))
    finally:
        slack.close()
    return out


def backfill(mon, env, tmp: Path, srv: Server, reps: int) -> dict:
    """`monitor backfill --since` the page's first incident, against the stdlib baseline, interleaved."""
    if srv.error:
        return {"error": f"replay server: {srv.error}",
                "needs": "tests/replay.py IncidentIoPage(window_updates=True): window lists carrying updates[]"}
    since = srv.info["first_started_at"]
    host = "status.openai.com"
    ours, bases = [], []
    # warm-up: the server renders each window once (memo), so that no measured run pays for rendering
    worker("backfillbase", env, tmp, base_url=srv.base_url, host=host, since=since, db=str(tmp / "backwarm.db"))
    for i in range(reps):
        bases.append(worker("backfillbase", env, tmp, base_url=srv.base_url, host=host, since=since,
                            db=str(tmp / f"backbase{i}.db")))
        cfg = write_config(tmp / f"back{i}.toml", tmp / f"back{i}.db",
                           [{"name": "io", "base_url": srv.base_url, "kind": "incidentio", "proxy_host": host,
                             "deadline": 600}])
        run_proc(mon + ["--config", str(cfg), "db", "upgrade"], env, tmp)
        srv.control("/__bench/reset")
        p = run_proc(mon + ["--config", str(cfg), "backfill", "--since", since], env, tmp, keep_stdout=True,
                     timeout=1800)
        stats = srv.control("/__bench/stats")
        ours.append({"wall_s": p.wall, "cpu_s": p.cpu, "maxrss_mb": p.maxrss_mb, "requests": stats["requests"],
                     "output": p.stdout().strip()})
    b0 = bases[0]
    return {"ours": ours, "baseline": bases, "incidents": b0["incidents"], "windows": b0["windows"],
            "ours_median_s": median([o["wall_s"] for o in ours]),
            "baseline_median_s": median([b["_process"]["wall_s"] for b in bases]),   # process wall, as ours
            "ours_requests": max(o["requests"] for o in ours),
            "allowed_requests": b0["windows"] + b0["entries_without_updates"]}


def daemon_cpu(mon, env, tmp: Path, srv: Server, window: float) -> dict:
    """CPU of real `monitor run` processes from /proc: one polling every 1 s (the config minimum), one idle
    (polls once, then every hour), over the same window; (active - idle) / polls."""
    procs = {}
    for label, interval in (("active", 1), ("idle", 3600)):
        cfg = write_config(tmp / f"d-{label}.toml", tmp / f"d-{label}.db",
                           [{"name": "openai", "base_url": srv.base_url, "poll_interval": interval}])
        err = open(tmp / f"d-{label}.log", "wb")
        procs[label] = (subprocess.Popen(mon + ["--config", str(cfg), "run"], stdout=subprocess.DEVNULL, stderr=err,
                                         stdin=subprocess.DEVNULL, env=env, cwd=tmp), err)

    def polls(label):
        return (tmp / f"d-{label}.log").read_text(errors="replace").count("poll openai:")

    try:
        time.sleep(5)  # start-up, migration, first (full) poll
        a0, i0, n0 = proc_cpu_s(procs["active"][0].pid), proc_cpu_s(procs["idle"][0].pid), polls("active")
        t0 = time.perf_counter()
        time.sleep(window)
        a1, i1, n1 = proc_cpu_s(procs["active"][0].pid), proc_cpu_s(procs["idle"][0].pid), polls("active")
        dt = time.perf_counter() - t0
        rss = {k: proc_rss_mb(p.pid) for k, (p, _) in procs.items()}
        n = n1 - n0
        return {"window_s": round(dt, 2), "polls": n, "active_cpu_s": round(a1 - a0, 3),
                "idle_cpu_s": round(i1 - i0, 3),
                "cpu_ms_per_poll": round((a1 - a0 - (i1 - i0)) / n * 1e3, 2) if n else None,
                "rss_mb": {k: round(v, 1) for k, v in rss.items()}, "polls_total": n1,
                "note": "/proc CPU ticks are 10 ms: this cross-checks the in-process figure"}
    finally:
        for p, err in procs.values():
            p.send_signal(signal.SIGTERM)
        for p, err in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            err.close()


def latency(mon, env, tmp: Path, srv: Server, changes: int) -> dict:
    """`monitor run` (poll_interval 2 s) with a json:// notifier for every incident; the replayed page's clock
    is moved to the next real update, and the time until the POST arrives is measured."""
    cap = Capture()
    times = [datetime.fromisoformat(t) for t in srv.info["update_times"]]
    i0 = len(times) - changes - 12
    t0 = times[i0] + timedelta(seconds=1)
    srv.control(f"/__bench/now?t={t0.isoformat().replace('+', '%2B')}")
    cfg = write_config(tmp / "lat.toml", tmp / "lat.db",
                       [{"name": "openai", "base_url": srv.base_url, "poll_interval": LATENCY_INTERVAL}],
                       [{"name": "bench", "url": cap.url, "tags": ["*"]}])
    err = open(tmp / "lat.log", "wb")
    p = subprocess.Popen(mon + ["--config", str(cfg), "run"], stdout=subprocess.DEVNULL, stderr=err,
                         stdin=subprocess.DEVNULL, env=env, cwd=tmp)
    lats, missed, rng = [], 0, random.Random(6)
    try:
        # wait for the first poll and its messages to settle
        end = time.monotonic() + 30
        while time.monotonic() < end and "poll openai:" not in (tmp / "lat.log").read_text(errors="replace"):
            time.sleep(0.1)
        last = -1
        while cap.count() != last:
            last = cap.count()
            time.sleep(3)
        for t in times[i0 + 1:i0 + 1 + changes]:
            time.sleep(rng.uniform(0, LATENCY_INTERVAL))      # land anywhere in the poll cycle
            n = cap.count()
            t_change = time.perf_counter()
            srv.control(f"/__bench/now?t={(t + timedelta(seconds=1)).isoformat().replace('+', '%2B')}")
            arrived = cap.wait_beyond(n, 15)
            if arrived is None:
                missed += 1
                continue
            lats.append(arrived - t_change)
            time.sleep(1.0)                                    # let any second message of this change land
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        err.close()
        cap.close()
    return {"interval_s": LATENCY_INTERVAL, "latencies_s": [round(x, 3) for x in lats],
            "median_s": median(lats), "max_s": max(lats) if lats else None, "missed": missed,
            "posts_total": len(cap.arrivals)}


# ------------------------------------------------------------------------------------------------ output


def render(res: dict) -> str:
    m = res["machine"]
    out = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM; {m['os']}",
           f"Python {m['python']}, SQLite {m['sqlite']}; " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
           ""]
    head = ["figure", "ours", "baseline (same run)", "ratio", "target", "met"]
    rows = [[r["figure"], r["ours"], r["baseline"], "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
             r["target"], {True: "yes", False: "NO", None: "n/a"}[r["met"]]] for r in res["table"]]
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    out.append("| " + " | ".join(h.ljust(n) for h, n in zip(head, w)) + " |")
    out.append("|" + "|".join("-" * (n + 2) for n in w) + "|")
    out += ["| " + " | ".join(str(c).ljust(n) for c, n in zip(r, w)) + " |" for r in rows]
    peer = res.get("peer_rss2email", {})
    st = res.get("startup", {}).get("unchanged_poll", {})
    if st:
        meas = peer.get("measured")
        ref = (f"{meas['version']} here: {meas['wall_s']:.2f} s, {meas['maxrss_mb']:.0f} MB" if meas
               else f"rss2email (quoted): {R2E_REFERENCE['wall_s']} s, {R2E_REFERENCE['rss_mb']:.0f} MB")
        out += ["", f"Peer, unchanged poll as a process: ours {st['median_s']:.2f} s, {st['maxrss_mb']:.0f} MB peak RSS; "
                    f"{ref} (quoted: {R2E_REFERENCE['wall_s']} s, {R2E_REFERENCE['rss_mb']:.0f} MB)"]
    d = res.get("daemon_cpu")
    if d:
        out.append(f"Real daemon (`monitor run`, poll_interval 1 s): {d['cpu_ms_per_poll']} ms CPU per poll over "
                   f"{d['polls']} polls (minus an idle daemon), RSS {d['rss_mb']['active']} MB after "
                   f"{d['polls_total']} polls")
    la = res["run"].get("loadavg_at_start"), res["run"].get("loadavg_at_end")
    out.append(f"Run took {res['run']['seconds']:.0f} s; load average (1/5/15 min) at start {la[0]}, at end {la[1]}"
               + ("  <- other work was running: figures are inflated" if max(la[0][0], la[1][0]) > 1.0 else ""))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and polls (smoke run)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each process measurement (default 5; "
                                                        "startup figures use twice as many)")
    ap.add_argument("--r2e", help="path of an rss2email `r2e` to measure as the peer (default: $R2E, else `r2e` "
                                  "on PATH, else the quoted figure is shown)")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="first wait up to this long for the 1-minute load average to drop below 1")
    args = ap.parse_args()
    res = bench(args)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(render(res))
    print()
    print(json.dumps(res["table"], indent=2))
    print(f"\nFull results: {args.out}")


if __name__ == "__main__":
    main()
