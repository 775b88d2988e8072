"""Print the OCI runtime config (config.json) of the local bundle that containers/oci/build.sh builds.

`runc spec`'s default, shaped the way HPC container runtimes (pyxis, apptainer) run jobs:
only a mount namespace, so the job shares the node's network, host name, process ids and
IPC (torch.distributed reaches other nodes, Slurm signals reach the processes); no cgroup
settings (`linux.resources`, `cgroupsPath`: the local cluster runs no cgroup limits); a
read-only image, with a private /tmp, the node's /dev/shm, /etc/hosts and /etc/resolv.conf.

Slurm (oci.conf) replaces process.args with the step's command, appends the job's
environment to process.env and points root.path at BUNDLE/rootfs; slurm/oci_run.py, the
runtime wrapper, adds the job's bind mounts (the run directory among them).
"""

from __future__ import annotations

import argparse
import json

# Docker's default capability set: what a root process in a container usually has.
CAPABILITIES = [
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
]


def config(venv: str) -> dict:
    env = [
        f"PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"VIRTUAL_ENV={venv}",
        "HOME=/tmp",  # the image is read-only; /tmp is the container's own
        "LANG=C.UTF-8",
        # Set empty so that the submitting side's values (appended by Slurm) never apply here.
        "PYTHONPATH=",
        "PYTHONHOME=",
        "PYTHONNOUSERSITE=1",
    ]
    bind_ro = ["rbind", "ro", "nosuid", "nodev"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [f"{venv}/bin/python", "-c", "import aistack, sys; print('aistack image', sys.executable)"],
            "env": env,
            "cwd": "/",
            "capabilities": {key: CAPABILITIES for key in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "nosuid", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": bind_ro},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": bind_ro},
        ],
        "linux": {
            "namespaces": [{"type": "mount"}],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", required=True, help="the venv inside the image")
    args = parser.parse_args()
    print(json.dumps(config(args.venv), indent=2))


if __name__ == "__main__":
    main()
