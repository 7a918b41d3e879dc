"""An SSH/SFTP server on 127.0.0.1 for the DVC SSH-remote tests, started by the suite itself.

It is asyncssh's server (asyncssh is pinned in requirements.txt: dvc-ssh's client rests on it),
so no OpenSSH server, root, or system package is needed: the tests run wherever `make test` does.
Keys are generated here (no `ssh-keygen`); only the generated client key may log in, with any
user name, and the SFTP subsystem serves this machine's file system as the test user sees it.
The server runs on its own event loop in a daemon thread and stops on exit from the `with`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path  # private key file (OpenSSH format) for `dvc remote modify --local ... keyfile`


class SftpServer:
    """`with SftpServer(key_dir) as server:` serves SFTP on 127.0.0.1:<free port>."""

    def __init__(self, key_dir: Path) -> None:
        key_dir.mkdir(parents=True, exist_ok=True)
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        client = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = key_dir / "client_key"
        client.write_private_key(str(self.client_key))
        self.client_key.chmod(0o600)
        self.authorized = asyncssh.import_authorized_keys(client.export_public_key().decode())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-server", daemon=True)
        self._acceptor: Any = None

    async def _listen(self) -> Any:
        return await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[self.host_key], authorized_client_keys=self.authorized,
            sftp_factory=True, allow_scp=False, password_auth=False, kbdint_auth=False,
            agent_forwarding=False, x11_forwarding=False, allow_pty=False)

    def __enter__(self) -> SshServer:
        self._thread.start()
        self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)
        # Any user name is accepted; a fixed one needs no passwd entry for the test's uid.
        return SshServer("127.0.0.1", int(self._acceptor.get_port()), "ups", self.client_key)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._acceptor.close()
            await self._acceptor.wait_closed()

        try:
            if self._acceptor is not None:
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
