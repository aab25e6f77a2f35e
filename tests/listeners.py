"""Which TCP sockets a set of processes listens on (read from /proc), to check that servers stay on loopback."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def session_pids(roots: set[int]) -> set[int]:
    """``roots``, the processes of the sessions they lead, and all their descendants."""
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), int(fields[3]))  # ppid, session
    pids = {pid for pid, (_, session) in procs.items() if session in roots} | roots
    while True:  # descendants that started a session of their own
        more = {pid for pid, (ppid, _) in procs.items() if ppid in pids} - pids
        if not more:
            return pids
        pids |= more


def _listening_sockets() -> dict[int, str]:
    """inode -> "address:port" of every listening TCP socket on the machine."""
    out = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A":  # LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out[int(cols[9])] = f"{ipaddress.ip_address(raw)}:{int(hex_port, 16)}"
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def listeners_of(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, "address:port") of every listening TCP socket the processes hold."""
    sockets = _listening_sockets()
    found = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # gone, or not ours to read
            continue
        for link in links:
            inode = int(link[8:-1]) if link.startswith("socket:[") else None
            if inode in sockets:
                found.append((pid, sockets[inode]))
    return found
