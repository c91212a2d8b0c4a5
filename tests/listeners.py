"""The TCP sockets a process tree listens on, read from /proc (Linux)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def process_tree(pid: int) -> set[int]:
    """`pid` and every process descended from it."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grown = {pid}, True
    while grown:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return tree


def _address(field: str) -> tuple[str, int]:
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp* print each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def listening(pids: set[int]) -> set[tuple[str, int]]:
    """The (address, port) pairs on which any of `pids` listens for TCP connections."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                found.add(_address(fields[1]))
    return found


def exposed(pairs: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The pairs that are not on a loopback address."""
    return {(host, port) for host, port in pairs if not ipaddress.ip_address(host).is_loopback}
