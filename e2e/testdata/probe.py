# probe.py — a plain client for l3iso's tests: runs the probes given as a
# JSON list in argv[1] and prints one JSON result per probe.
#
#   {"kind": "http", "addr": "10.77.0.1", "port": 8080, "path": "/"}
#   {"kind": "tcp",  "addr": ..., "port": ...}   read one line
#   {"kind": "udp",  "addr": ..., "port": ...}   sendto, recvfrom one datagram
#   {"kind": "cudp", "addr": ..., "port": ...}   the same on a connect()ed socket
#   {"kind": "connect", "addr": ..., "port": ...} just connect
#
# Every probe retries for up to "wait" seconds (default 0) while the
# connection is refused (a server still starting). A result is
# {"ok": true, "body": ..., "peer": ..., "local": ...} or
# {"ok": false, "error": "ECONNREFUSED" | ..., "secs": elapsed}.
import errno, json, socket, sys, time, urllib.request

def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET

def once(p):
    kind, addr, port = p["kind"], p["addr"], p["port"]
    timeout = p.get("timeout", 3)
    if kind == "http":
        host = "[%s]" % addr if ":" in addr else addr
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            r = opener.open("http://%s:%d%s" % (host, port, p.get("path", "/")), timeout=timeout)
            return {"ok": True, "status": r.status, "body": r.read().decode().strip()}
        except urllib.error.HTTPError as e:
            return {"ok": True, "status": e.code, "body": e.read().decode().strip()}
    s = socket.socket(family(addr), socket.SOCK_DGRAM if kind in ("udp", "cudp") else socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if kind == "udp":
            s.sendto(b"who?", (addr, port))
            b, peer = s.recvfrom(1500)
            return {"ok": True, "body": b.decode().strip(), "peer": str(peer[0]), "local": str(s.getsockname()[0])}
        s.connect((addr, port))
        if kind == "cudp":
            s.send(b"who?")
            body = s.recv(1500).decode().strip()
        elif kind == "tcp":
            body = s.recv(1500).decode().strip()
        else:
            body = ""
        return {"ok": True, "body": body, "peer": str(s.getpeername()[0]), "local": str(s.getsockname()[0])}
    finally:
        s.close()

def run(p):
    deadline = time.time() + p.get("wait", 0)
    start = time.time()
    while True:
        try:
            return once(p)
        except Exception as e:
            err = getattr(e, "reason", e)
            code = getattr(err, "errno", None)
            name = errno.errorcode.get(code, type(err).__name__) if code else type(err).__name__
            if name == "ECONNREFUSED" and time.time() < deadline:
                time.sleep(0.1)
                continue
            return {"ok": False, "error": name, "secs": round(time.time() - start, 3)}

for p in json.loads(sys.argv[1]):
    print(json.dumps(run(p)), flush=True)
