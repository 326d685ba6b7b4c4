"""Network guard for tests: loaded by every Python process started with this folder on PYTHONPATH.

With ``WATTSUP_NETGUARD=1``, any outbound connection or name lookup other than to
``127.0.0.1``/``::1``/``localhost`` on the ports in ``WATTSUP_NETGUARD_ALLOW`` (comma-separated;
empty: none) is refused and written to ``WATTSUP_NETGUARD_LOG``, so a test can fail on it even
when the code under test swallows the error (as telemetry threads do). Unix sockets are allowed.
"""

import os

if os.environ.get("WATTSUP_NETGUARD") == "1":
    import socket

    _ALLOWED_PORTS = {int(p) for p in os.environ.get("WATTSUP_NETGUARD_ALLOW", "").split(",") if p.strip()}
    _LOG = os.environ.get("WATTSUP_NETGUARD_LOG")
    _LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0"}
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _violation(what):
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{os.getpid()} {what}\n")
        raise OSError(101, f"network disabled by the test guard: {what}")

    def _check(sock, address):
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        host, port = address[0], address[1]
        if host not in _LOCAL or port not in _ALLOWED_PORTS:
            _violation(f"connect {host}:{port}")

    def connect(self, address):
        _check(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        h = host.decode() if isinstance(host, bytes) else host
        if h not in _LOCAL and h is not None:
            _violation(f"resolve {h}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
