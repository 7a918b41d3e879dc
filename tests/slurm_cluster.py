"""A real Slurm on this machine for tests/cluster: munged, slurmctld and two slurmd on 127.0.0.1.

Debian's slurm-wlm and munge (`make test-cluster` installs them). Everything lives in one fresh
directory: a random munge key, the munge socket, slurm.conf (free ports, state, spool, logs),
so nothing under /etc is read or changed and two runs never meet. Two "nodes" (n1, n2, one CPU
each) are two slurmd processes with their own ports: srun and job arrays spread over them as over
two machines, and the c10d rendezvous of a 2-node training really joins two torchrun agents.
Each node also declares 8 "GPUs" (generic resources backed by empty files), so that a job can ask
for --gpus-per-node as on a GPU cluster and find no GPU inside. Cgroups are not needed
(proctrack/linuxproc, task/none), nor accounting or systemd.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NODES = ("n1", "n2")
GPUS = 8  # per node, declared (no device behind them)
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "munge")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _which(name: str) -> str:
    path = shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin")
                                       if os.access(f"{d}/{name}", os.X_OK)), None)
    if path is None:
        raise RuntimeError(f"{name} is not installed: `make test-cluster` installs Debian's slurm-wlm "
                           "and munge (apt-get, as root)")
    return path


class LocalSlurm:
    def __init__(self) -> None:
        self.bin = {name: _which(name) for name in DAEMONS}
        # Not under pytest's tmp dir: munged wants every user to be able to reach its socket.
        self.root = Path(tempfile.mkdtemp(prefix="ups-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "run" / "munge.sock"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- start / stop ------------------------------------------------------------------------

    def start(self) -> LocalSlurm:
        r = self.root
        for d in ("run", "state", "log", "spool"):
            (r / d).mkdir(mode=0o755)
        key_dir = r / "key"
        key_dir.mkdir(mode=0o700)
        (key_dir / "munge.key").write_bytes(os.urandom(1024))
        (key_dir / "munge.key").chmod(0o400)
        subprocess.run([self.bin["munged"], f"--key-file={key_dir / 'munge.key'}", f"--socket={self.socket}",
                        f"--pid-file={r / 'run/munged.pid'}", f"--log-file={r / 'log/munged.log'}",
                        f"--seed-file={key_dir / 'seed'}"], check=True, timeout=30)
        self._wait(lambda: subprocess.run([self.bin["munge"], "-n", "-S", str(self.socket)],
                                          capture_output=True).returncode == 0, "munged")
        for i in range(GPUS):
            (r / "gpus" / f"gpu{i}").parent.mkdir(exist_ok=True)
            (r / "gpus" / f"gpu{i}").touch()
        (r / "gres.conf").write_text(f"Name=gpu File={r}/gpus/gpu[0-{GPUS - 1}]\n")  # beside slurm.conf
        self.conf.write_text(self._slurm_conf())
        subprocess.run([self.bin["slurmctld"], "-f", str(self.conf)], check=True, env=self.env, timeout=30)
        for node in NODES:
            subprocess.run([self.bin["slurmd"], "-f", str(self.conf), "-N", node], check=True, env=self.env,
                           timeout=30)
        self._wait(self._nodes_idle, "two idle slurmd nodes")
        return self

    def stop(self) -> None:
        subprocess.run([self.bin["scontrol"], "shutdown"], env=self.env, capture_output=True, timeout=30)
        time.sleep(1)
        for pid_file in sorted((self.root / "run").glob("*.pid")):  # whatever is still running, by id
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ValueError, ProcessLookupError, PermissionError, IndexError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalSlurm:
        try:
            return self.start()
        except BaseException:
            print(self.logs())
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers -----------------------------------------------------------------------------

    def _slurm_conf(self) -> str:
        r, user, host = self.root, getpass.getuser(), socket.gethostname()
        nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} "
                          f"CPUs=1 Gres=gpu:{GPUS} RealMemory=1000 State=UNKNOWN" for n in NODES)
        return f"""\
ClusterName=upstest
GresTypes=gpu
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={self.socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""

    def _nodes_idle(self) -> bool:
        res = subprocess.run([self.bin["sinfo"], "-h", "-N", "-o", "%N %T"], env=self.env,
                             capture_output=True, text=True, timeout=30)
        states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
        return all(states.get(n) == "idle" for n in NODES)

    @staticmethod
    def _wait(ready, what: str, timeout_s: float = 60) -> None:
        t0 = time.monotonic()
        while not ready():
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"local Slurm: {what} not ready after {timeout_s:.0f} s")
            time.sleep(0.5)

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
               timeout_s: float = 1800) -> subprocess.CompletedProcess[str]:
        """`sbatch --wait` (the job's exit status is sbatch's)."""
        return subprocess.run([self.bin["sbatch"], "--wait", *args], cwd=cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout_s)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.root / "log").glob("*.log")))


def wait_for_jobs(slurm: LocalSlurm, name: str, timeout_s: float = 600) -> None:
    """Until no job called `name` is pending or running (a run of dependent jobs has ended)."""
    def done() -> bool:
        squeue = shutil.which("squeue") or "/usr/bin/squeue"
        res = subprocess.run([squeue, "-h", f"--name={name}", "-o", "%i"],
                             env=slurm.env, capture_output=True, text=True, timeout=30)
        return res.returncode == 0 and not res.stdout.strip()

    LocalSlurm._wait(done, f"the jobs named {name} to end", timeout_s)


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE")


def job_record(slurm: LocalSlurm, job_id: str) -> str:
    """`scontrol show job -o`: one line of KEY=VALUE (empty once Slurm has forgotten the job)."""
    res = subprocess.run([slurm.bin["scontrol"], "show", "job", "-o", job_id], env=slurm.env,
                         capture_output=True, text=True, timeout=30)
    return res.stdout.strip() if res.returncode == 0 else ""


def wait_for_job(slurm: LocalSlurm, job_id: str, timeout_s: float = 600) -> str:
    """Until job `job_id` has ended for good (a requeued job runs again first); its last record.

    By id, not by name: a job that ended before a first look, or one between its requeue and its
    rerun, is never taken for a job that is done.
    """
    record = ""

    def ended() -> bool:
        nonlocal record
        record = job_record(slurm, job_id) or record
        state = next((f.split("=", 1)[1] for f in record.split() if f.startswith("JobState=")), "")
        return state in ENDED

    LocalSlurm._wait(ended, f"job {job_id} to end", timeout_s)
    return record

