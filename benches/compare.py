#!/usr/bin/env python3
"""gentgt vs tgt, side by side, same machine, same run (see BENCHMARKS.md).

Starts gentgt (BIN serve, generated config: one file LUN) and Debian's tgtd
(foreground, private control port) on 127.0.0.1 with equal LUNs: same size,
same block size (512), the same kind of backing file, filled with data so
neither serves holes. Then drives both, interleaved run by run so machine
noise hits both alike, with the same independent initiators:

  iscsi-perf  (libiscsi; reads only; -r random, -m depth, -b blocks, -t s)
  qemu-img bench with the iscsi:// driver (reads and writes; "random" is a
              large odd stride modulo the LUN, aligned to the I/O size)
  gentgt-bench  (optional, --tools) `gentgt bench`, the project's own
              initiator: random 4K cases only, but the one tool here that
              reports p50/p99 latency. Not independent of gentgt's code.

Per case and target: the median of --runs runs of IOPS and MiB/s, and the
target's CPU time per I/O: utime+stime of the whole target process (all
threads) from /proc/PID/stat before and after the run, divided by the I/Os
the run did. QD1 mean latency is 1/IOPS (the independent tools report no
percentiles; gentgt-bench does).

Only the Python standard library is used. Nothing is built here.
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENTGT_IQN = "iqn.2026-11.dev.gentgt:bench"
TGT_IQN = "iqn.2026-11.dev.gentgt:tgt-bench"
INITIATOR = "iqn.2026-11.dev.gentgt:bench-client"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024
# Offset stride for qemu-img's "random" pattern: a prime number of 4 KiB
# pages (~409 MiB), so successive I/Os land far apart and (modulo the LUN)
# visit every aligned slot before repeating.
RANDOM_STRIDE_PAGES = 104729


class SetupError(Exception):
    pass


def say(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- cases

class Case:
    def __init__(self, name, size, depth, write, random_, unit, sessions=1, digest=False):
        self.name, self.size, self.depth = name, size, depth
        self.write, self.random, self.unit = write, random_, unit
        # sessions: that many load processes at once, each with its own
        # session and `depth`; digest: CRC32C header digests (libiscsi
        # offers no data digests).
        self.sessions, self.digest = sessions, digest


def all_cases(seq_depth):
    return [
        Case("4K randread QD1", 4 * KIB, 1, False, True, "iops"),
        Case("4K randread QD32", 4 * KIB, 32, False, True, "iops"),
        Case("4K randwrite QD1", 4 * KIB, 1, True, True, "iops"),
        Case("4K randwrite QD32", 4 * KIB, 32, True, True, "iops"),
        Case(f"128K seqread QD{seq_depth}", 128 * KIB, seq_depth, False, False, "mib"),
        Case(f"128K seqwrite QD{seq_depth}", 128 * KIB, seq_depth, True, False, "mib"),
        Case(f"1M seqread QD{seq_depth}", MIB, seq_depth, False, False, "mib"),
        Case(f"1M seqwrite QD{seq_depth}", MIB, seq_depth, True, False, "mib"),
        Case("4K randread 4x QD8", 4 * KIB, 8, False, True, "iops", sessions=4),
        Case(f"128K seqread 4x QD{seq_depth}", 128 * KIB, seq_depth, False, False, "mib",
             sessions=4),
        Case("4K randread QD32 hdigest", 4 * KIB, 32, False, True, "iops", digest=True),
        Case(f"128K seqread QD{seq_depth} hdigest", 128 * KIB, seq_depth, False, False, "mib",
             digest=True),
    ]


# ----------------------------------------------------------------- helpers

def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port != 3260:
            return port


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(pred, seconds, step=0.1):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def cpu_seconds(pid):
    """utime+stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: fields count from after ")".
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pinned(cpu, cmd):
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd


def fill_file(path, size):
    """Write real data over the whole file (no holes), then fsync."""
    chunk = os.urandom(MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, MIB)
            f.write(chunk[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------- targets

class Gentgt:
    label = "gentgt"

    def __init__(self, binary, workdir, backing, size, tracking, cpu):
        self.binary, self.workdir, self.backing = binary, workdir, backing
        # tracking: a CBT mode, then optional ":"-separated variants:
        # "poll=US" (busy_poll_us), "uring" (io = "uring"), "direct" (io_uring
        # with O_DIRECT).
        self.key = f"gentgt/{tracking}"
        tracking, *opts = tracking.split(":")
        self.poll = next((o[5:] for o in opts if o.startswith("poll=")), None)
        self.lun_extra = ""
        if "uring" in opts or "direct" in opts:
            self.lun_extra += 'io = "uring"\n'
        if "direct" in opts:
            self.lun_extra += "direct = true\n"
        self.size, self.tracking, self.cpu = size, tracking, cpu
        self.proc = None
        self.log = workdir / "gentgt.log"

    def start(self):
        self.port = free_port()
        cfg = self.workdir / "gentgt.toml"
        cfg.write_text(
            f'listen = ["127.0.0.1:{self.port}"]\n'
            f'data_dir = "{self.workdir}"\n'
            + (f'busy_poll_us = {self.poll}\n' if self.poll is not None else "")
            + '\n'
            f'[[target]]\nname = "{GENTGT_IQN}"\n\n'
            f'[[target.lun]]\nid = 0\nbackend = "file"\n'
            f'path = "{self.backing}"\nsize = {self.size}\nblock_size = 512\n'
            f'tracking = "{self.tracking}"\n' + self.lun_extra)
        cmd = pinned(self.cpu, [str(self.binary), "serve", "--config", str(cfg),
                                "--listen", f"127.0.0.1:{self.port}",
                                "--data-dir", str(self.workdir)])
        self.cmd = cmd
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if not wait_for(lambda: self.proc.poll() is not None or port_open(self.port), 30) \
                or self.proc.poll() is not None:
            raise SetupError(f"gentgt did not start: {' '.join(cmd)}\n"
                             + self.log.read_text(errors="replace")[-2000:])
        self.pid = self.proc.pid
        self.iqn, self.lun = GENTGT_IQN, 0
        self.url = f"iscsi://127.0.0.1:{self.port}/{GENTGT_IQN}/0"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Tgt:
    label = "tgt"
    key = "tgt"

    def __init__(self, workdir, backing, cpu):
        self.workdir, self.backing, self.cpu = workdir, backing, cpu
        self.proc = None
        self.cport = None
        self.log = workdir / "tgtd.log"

    def adm(self, *args, timeout=15):
        return subprocess.run(["tgtadm", "-C", str(self.cport), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)

    @staticmethod
    def control_files(port):
        return [f"/var/run/tgtd/socket.{port}", f"/var/run/tgtd/socket.{port}.lock"]

    def start(self):
        # tgtd's control socket is /var/run/tgtd/socket.PORT (PORT <= 32767);
        # never take one that exists (a system tgtd or another run).
        while True:
            self.cport = random.randint(10000, 32767)
            if not any(Path(f).exists() for f in self.control_files(self.cport)):
                break
        self.port = free_port()
        cmd = pinned(self.cpu, ["tgtd", "-f", "-C", str(self.cport), "--iscsi",
                                f"portal=127.0.0.1:{self.port}"])
        self.cmd = cmd
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        up = wait_for(lambda: self.proc.poll() is not None
                      or self.adm("--mode", "sys", "--op", "show").returncode == 0,
                      10, step=0.2)
        if not up or self.proc.poll() is not None or not port_open(self.port):
            self.kill()
            raise SetupError("tgtd did not start:\n"
                             + self.log.read_text(errors="replace")[-2000:])
        self.pid = self.proc.pid
        for step in [
            ("--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "1",
             "--targetname", TGT_IQN),
            ("--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1",
             "--lun", "1", "--backing-store", str(self.backing)),
            ("--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1",
             "--initiator-address", "ALL"),
        ]:
            r = self.adm(*step)
            if r.returncode != 0:
                self.stop()
                raise SetupError(f"tgtadm {' '.join(step)}: {r.stdout}")
        self.iqn, self.lun = TGT_IQN, 1
        self.url = f"iscsi://127.0.0.1:{self.port}/{TGT_IQN}/1"

    def kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in self.control_files(self.cport):
                try:
                    os.unlink(f)
                except OSError:
                    pass
        self.proc = None

    def stop(self):
        # tgtd ignores SIGTERM: delete the target, then the system, over its
        # control socket; SIGKILL only if that fails.
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.adm("--lld", "iscsi", "--mode", "target", "--op", "delete",
                         "--force", "--tid", "1", timeout=10)
                self.adm("--op", "delete", "--mode", "system", timeout=10)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


# ----------------------------------------------------------------- load

IOPS_RE = re.compile(r"iops average (\d+)")
QEMU_RE = re.compile(r"Run completed in ([0-9.]+) seconds")


def iscsi_perf_cmd(case, url, seconds, initiator=INITIATOR):
    cmd = ["iscsi-perf", "-i", initiator, "-m", str(case.depth),
           "-b", str(case.size // 512), "-t", str(seconds)]
    if case.digest:
        url += "?header_digest=crc32c"
    return cmd + (["-r"] if case.random else []) + [url]


def qemu_cmd(case, url, count):
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count),
           "-d", str(case.depth), "-s", str(case.size)]
    if case.random:
        cmd += ["-S", str(RANDOM_STRIDE_PAGES * 4096)]
    if case.write:
        cmd += ["-w", "--pattern", "165"]
    return cmd + [url]


def fio_cmd(binary, case, target, seconds):
    # fio's file names use ':' as a separator: escape the URL's colons.
    url = target.url.replace(":", "\\:")
    rw = ("rand" if case.random else "") + ("write" if case.write else "read")
    return [binary, "--name=bench", "--ioengine=libiscsi", f"--filename={url}",
            f"--initiator={INITIATOR}", f"--rw={rw}", f"--bs={case.size}",
            f"--iodepth={case.depth}", "--time_based", f"--runtime={seconds:g}",
            "--norandommap", "--randrepeat=0", "--output-format=json"]


def gentgt_bench_cmd(binary, case, target, seconds):
    return [binary, "bench", "--portal", f"127.0.0.1:{target.port}",
            "--target", target.iqn, "--lun", str(target.lun),
            "--initiator", INITIATOR, "--qd", str(case.depth),
            "--rw", "write" if case.write else "read", "--bs", str(case.size),
            "--seconds", str(seconds), "--warmup", "0.5", "--json"]


def tool_fits(tool, case):
    if case.sessions > 1 or case.digest:
        return tool == "iscsi-perf"
    if tool == "fio":
        return True
    if tool == "iscsi-perf":
        return not case.write
    if tool == "gentgt-bench":
        return case.random
    return True


def fio_result(out, case):
    """(I/Os, IOPS, latency percentiles) from fio's JSON output."""
    try:
        job = json.loads(out[out.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError) as e:
        raise SetupError(f"no JSON in fio output ({e}):\n{out[-800:]}")
    if job.get("error"):
        raise SetupError(f"fio job error {job['error']}:\n{out[-800:]}")
    d = job["write" if case.write else "read"]
    pct = d.get("clat_ns", {}).get("percentile", {})
    extra = {}
    if pct:
        extra = {"p50_us": pct["50.000000"] / 1000, "p99_us": pct["99.000000"] / 1000}
    return d["total_ios"], d["iops"], extra


class Runner:
    def __init__(self, args):
        self.args = args
        self.qemu_counts = {}
        self.perf_done = False

    def one(self, tool, case, target):
        """One run; returns dict(iops, mib, cpu_per_io_us, ios, secs)."""
        seconds = self.args.seconds
        if tool == "iscsi-perf":
            cmd = iscsi_perf_cmd(case, target.url, int(round(seconds)))
        elif tool == "gentgt-bench":
            cmd = gentgt_bench_cmd(self.args.bin, case, target, seconds)
        elif tool == "fio":
            cmd = fio_cmd(self.args.fio, case, target, seconds)
        else:
            key = (case.name, target.key)
            if key not in self.qemu_counts:
                self.qemu_counts[key] = self.calibrate(case, target)
            cmd = qemu_cmd(case, target.url, self.qemu_counts[key])
        cmd = pinned(self.args.load_cpu, cmd)
        extra = {}
        perf = self.maybe_perf(tool, case, target)
        c0 = cpu_seconds(target.pid)
        t0 = time.monotonic()
        if case.sessions > 1:
            r = self.several(case, target, cmd)
        else:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=seconds * 10 + 60)
        wall = time.monotonic() - t0
        c1 = cpu_seconds(target.pid)
        if perf:
            perf.send_signal(2)
            perf.wait(timeout=60)
        if r.returncode != 0:
            raise SetupError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-1500:]}")
        if tool == "iscsi-perf":
            m = IOPS_RE.findall(r.stdout)
            if not m:
                raise SetupError(f"no iops in iscsi-perf output:\n{r.stdout[-800:]}")
            iops = float(m[-1]) if case.sessions == 1 else float(r.total)
            ios = iops * int(round(seconds))
        elif tool == "gentgt-bench":
            j = json.loads(r.stdout.strip().splitlines()[-1])
            # CPU was sampled around the warm-up too: divide by every I/O.
            ios, iops = j["ios_total"], j["iops"]
            extra = {"p50_us": j["p50_us"], "p99_us": j["p99_us"]}
        elif tool == "fio":
            ios, iops, extra = fio_result(r.stdout, case)
        else:
            m = QEMU_RE.search(r.stdout)
            if not m:
                raise SetupError(f"no time in qemu-img output:\n{r.stdout[-800:]}")
            ios = self.qemu_counts[(case.name, target.key)]
            iops = ios / float(m.group(1))
        self.last_cmd = cmd
        return {"iops": iops, "mib": iops * case.size / MIB,
                "cpu_per_io_us": (c1 - c0) / max(ios, 1) * 1e6,
                "ios": ios, "wall": wall, **extra}

    def several(self, case, target, cmd):
        """case.sessions iscsi-perf processes at once (distinct initiator
        names, so distinct sessions); returns an object with .returncode,
        .stdout (all outputs) and .total (summed IOPS)."""
        seconds = int(round(self.args.seconds))
        procs = []
        for i in range(case.sessions):
            c = pinned(self.args.load_cpu,
                       iscsi_perf_cmd(case, target.url, seconds, f"{INITIATOR}-{i}"))
            procs.append(subprocess.Popen(c, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outs = [p.communicate(timeout=seconds * 10 + 60)[0] for p in procs]
        r = types.SimpleNamespace(returncode=max(p.returncode for p in procs),
                                  stdout="\n".join(outs), total=0.0)
        for o in outs:
            m = IOPS_RE.findall(o)
            r.total += float(m[-1]) if m else 0.0
        return r

    def calibrate(self, case, target):
        """A short warm-up run whose rate sizes the measured runs."""
        guess = max(64, int(0.5 * (20000 if case.size <= 4096 else 2 * 2**30 / case.size)))
        cmd = pinned(self.args.load_cpu, qemu_cmd(case, target.url, guess))
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=300)
        m = QEMU_RE.search(r.stdout)
        if r.returncode != 0 or not m:
            raise SetupError(f"{' '.join(cmd)} failed:\n{r.stdout[-1500:]}")
        rate = guess / max(float(m.group(1)), 1e-3)
        return max(64, min(10_000_000, int(rate * self.args.seconds)))

    def maybe_perf(self, tool, case, target):
        """perf record gentgt during the first 4K QD32 read run (--perf-record)."""
        a = self.args
        if not a.perf_record or self.perf_done or target.label != "gentgt" \
                or tool != "iscsi-perf" or case.name != "4K randread QD32":
            return None
        self.perf_done = True
        p = subprocess.Popen(["perf", "record", "-g", "-F", "999", "-p",
                              str(target.pid), "-o", a.perf_record],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        return p


# ----------------------------------------------------------------- tcp

def loopback_stream(seconds, cpu_rx, cpu_tx):
    """MiB/s of one loopback TCP stream: iperf3 if present, else Python."""
    if shutil.which("iperf3"):
        port = free_port()
        srv = subprocess.Popen(pinned(cpu_rx, ["iperf3", "-s", "-1", "-p", str(port)]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: port_open_probe(port), 5)
            r = subprocess.run(pinned(cpu_tx, ["iperf3", "-c", "127.0.0.1", "-p", str(port),
                                               "-t", str(int(seconds)), "-J"]),
                               stdout=subprocess.PIPE, text=True, timeout=seconds + 30)
            bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
            return bps / 8 / MIB, "iperf3"
        finally:
            # "-s -1" exits after one test; kill it only if it did not.
            try:
                srv.wait(timeout=10)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
    return python_stream(seconds), "python3 socket"


def loopback_floor(cpu_srv, cpu_cli, poll=False):
    """(p50, p99) µs of a do-nothing request/response over loopback (with
    poll: the server polls instead of sleeping), or None without a C
    compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "floor"
        subprocess.run([cc, "-O2", "-o", str(exe), str(REPO / "benches" / "loopback_floor.c")],
                       check=True)
        args = [str(exe), str(free_port()), "20000", str(cpu_srv), str(cpu_cli)]
        r = subprocess.run(args + (["poll"] if poll else []),
                           stdout=subprocess.PIPE, text=True, timeout=120, check=True)
        p50, p99 = (float(x) for x in r.stdout.split()[1::2])
        return p50, p99


def port_open_probe(port):
    # iperf3 -s -1 serves one test; a bare connect would use it up, so only
    # look at the listening sockets.
    out = subprocess.run(["ss", "-ltn"], stdout=subprocess.PIPE, text=True).stdout
    return f":{port} " in out


def python_stream(seconds):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    got = [0]

    def rx():
        c, _ = lsock.accept()
        buf = bytearray(4 * MIB)
        while True:
            n = c.recv_into(buf)
            if not n:
                break
            got[0] += n
        c.close()

    t = threading.Thread(target=rx)
    t.start()
    s = socket.create_connection(lsock.getsockname())
    data = b"\xa5" * (4 * MIB)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        s.sendall(data)
    s.close()
    t.join()
    return got[0] / (time.monotonic() - t0) / MIB


# ----------------------------------------------------------------- table

def fmt_val(case, v):
    s = f"{v['iops']:,.0f} IOPS" if case.unit == "iops" else f"{v['mib']:,.0f} MiB/s"
    if "p50_us" in v:
        s += f" (p50 {v['p50_us']:.0f} / p99 {v['p99_us']:.0f} µs)"
    return s


def median_of(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def table(rows, title):
    head = ["case", "tool", "gentgt", "tgt", "ratio g/t",
            "CPU/IO gentgt", "CPU/IO tgt", "CPU ratio g/t"]
    out = [f"### {title}", "", "| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
    for case, tool, g, t in rows:
        key = "iops" if case.unit == "iops" else "mib"
        extra = ""
        if case.depth == 1 and case.unit == "iops":
            extra = f" (mean lat {1e6 / g['iops']:.0f} / {1e6 / t['iops']:.0f} µs)"
        out.append("| " + " | ".join([
            case.name, tool, fmt_val(case, g), fmt_val(case, t),
            f"{g[key] / t[key]:.2f}{extra}",
            f"{g['cpu_per_io_us']:.1f} µs", f"{t['cpu_per_io_us']:.1f} µs",
            f"{g['cpu_per_io_us'] / max(t['cpu_per_io_us'], 1e-9):.2f}"]) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------- main

def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(REPO / "target/release/gentgt"))
    p.add_argument("--tracking", default="off",
                   help="gentgt CBT tracking: off, volatile, persistent (comma list: "
                        "one gentgt column set per mode)")
    p.add_argument("--backing", default="shm,disk",
                   help="shm (/dev/shm, tmpfs) and/or disk (a file under --disk-dir)")
    p.add_argument("--disk-dir", default="/tmp")
    p.add_argument("--size", default="1GiB", help="LUN size (K/M/GiB units)")
    p.add_argument("--seconds", type=float, default=3, help="per measured run")
    p.add_argument("--runs", type=int, default=3, help="median of this many")
    p.add_argument("--tools", default="iscsi-perf,qemu-img",
                   help="iscsi-perf, qemu-img, fio, gentgt-bench (comma list)")
    p.add_argument("--fio", default=str(REPO / "target/fio/fio"),
                   help="fio with the libiscsi engine (benches/build_fio.sh builds it)")
    p.add_argument("--cases", default="", help="regex on case names (default all)")
    p.add_argument("--seq-depth", type=int, default=8, help="QD of sequential cases")
    p.add_argument("--target-cpu", default="0", help="core for targets ('' = no pinning)")
    p.add_argument("--load-cpu", default="1", help="core for the load generator")
    p.add_argument("--tcp-seconds", type=float, default=3,
                   help="loopback TCP stream measurement (0 skips)")
    p.add_argument("--perf-record", default="",
                   help="perf record gentgt during the first 4K QD32 read run into FILE")
    p.add_argument("--json", default="", help="also write every run's numbers here")
    a = p.parse_args()
    a.target_cpu = a.target_cpu or None
    a.load_cpu = a.load_cpu or None
    return a


def parse_size(s):
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", s.strip())
    if not m:
        raise SystemExit(f"bad size {s!r}")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def bench_backing(a, backing, size, cases, tools, modes, runner, all_runs):
    base = Path("/dev/shm") if backing == "shm" else Path(a.disk_dir)
    work = Path(tempfile.mkdtemp(prefix="gentgt-bench-", dir=base))
    targets = []
    runner.qemu_counts = {}  # rates differ by backing: calibrate again
    try:
        say(f"== backing {backing}: filling 2 x {size >> 20} MiB in {work}")
        fill_file(work / "tgt.img", size)
        tgt = Tgt(work, work / "tgt.img", a.target_cpu)
        tgt.start()
        targets.append(tgt)
        gents = {}
        for mode in modes:
            img = work / f"gentgt-{mode.replace(':', '-')}.img"
            fill_file(img, size)
            d = work / f"g-{mode.replace(':', '-')}"
            d.mkdir()
            g = Gentgt(Path(a.bin), d, img, size, mode, a.target_cpu)
            g.start()
            targets.append(g)
            gents[mode] = g
        say(f"   gentgt: {' '.join(next(iter(gents.values())).cmd)}")
        say(f"   tgt:    {' '.join(tgt.cmd)}")
        results = {}
        for case in cases:
            for tool in tools:
                if not tool_fits(tool, case):
                    continue
                runs = {("tgt", None): []}
                runs.update({("gentgt", m): [] for m in modes})
                for i in range(a.runs):
                    # Interleave targets run by run (and rotate who goes
                    # first) so background load hits both alike.
                    order = [(g.label, m, g) for m, g in gents.items()] + [("tgt", None, tgt)]
                    if i % 2:
                        order.reverse()
                    for label, m, t in order:
                        v = runner.one(tool, case, t)
                        runs[(label, m)].append(v)
                        all_runs.append({"backing": backing, "case": case.name,
                                         "tool": tool, "target": label,
                                         "tracking": m, "run": i, **v,
                                         "cmd": " ".join(runner.last_cmd)})
                say(f"   {case.name:<20} {tool:<10} " + "  ".join(
                    f"{lbl}{'/' + m if m else ''}={fmt_val(case, median_of(r))}"
                    for (lbl, m), r in runs.items()))
                results[(case.name, tool)] = (case, tool, {k: median_of(r) for k, r in runs.items()})
        return results
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(work, ignore_errors=True)


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    return (f"{os.cpu_count()} x {model}, {mem} GiB RAM, kernel {os.uname().release}, "
            f"load avg at start {os.getloadavg()[0]:.2f}")


def main():
    a = parse_args()
    size = parse_size(a.size)
    modes = [m for m in a.tracking.split(",") if m]
    tools = [t for t in a.tools.split(",") if t]
    cases = [c for c in all_cases(a.seq_depth) if re.search(a.cases or ".", c.name)]
    if "fio" in tools and not Path(a.fio).is_file():
        raise SystemExit(f"no fio at {a.fio} (benches/build_fio.sh)")
    for tool in [t for t in tools if t not in ("gentgt-bench", "fio")] \
            + ["tgtd", "tgtadm", "taskset"]:
        if not shutil.which(tool):
            raise SystemExit(f"missing {tool}")
    if not Path(a.bin).is_file():
        raise SystemExit(f"no gentgt binary at {a.bin} (cargo build --release)")
    print(f"Machine: {machine()}")
    print(f"Pinning: targets on CPU {a.target_cpu}, load generator on CPU {a.load_cpu}; "
          f"{a.runs} runs x {a.seconds:g} s per case, medians; LUN {a.size}, 512-byte blocks")
    if a.tcp_seconds > 0:
        mib, how = loopback_stream(a.tcp_seconds, a.target_cpu, a.load_cpu)
        print(f"One loopback TCP stream ({how}, pinned like the targets): {mib:,.0f} MiB/s")
        floor = loopback_floor(a.target_cpu, a.load_cpu)
        if floor:
            print(f"QD1 4K request/response floor (benches/loopback_floor.c, a target doing "
                  f"no work): p50 {floor[0]:.1f} us, p99 {floor[1]:.1f} us")
            polled = loopback_floor(a.target_cpu, a.load_cpu, poll=True)
            print(f"  the same with the server polling its socket: p50 {polled[0]:.1f} us, "
                  f"p99 {polled[1]:.1f} us")
    runner = Runner(a)
    all_runs = []
    for backing in [b for b in a.backing.split(",") if b]:
        res = bench_backing(a, backing, size, cases, tools, modes, runner, all_runs)
        for mode in modes:
            rows = [(c, tool, r[("gentgt", mode)], r[("tgt", None)])
                    for c, tool, r in res.values()]
            print()
            print(table(rows, f"backing {backing}, gentgt tracking={mode}"))
    if a.json:
        Path(a.json).write_text(json.dumps(all_runs, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        say(f"setup error: {e}")
        sys.exit(2)
