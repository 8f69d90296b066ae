#!/usr/bin/env python3
"""APPEND messages with Python's imaplib, read them back, and search.

Used by proxy/clients_dovecot_test.go (TestImaplibAppendFetch,
TestImaplibSearch). Only the standard library. Reads one JSON object on
stdin:

  {"host": "127.0.0.1", "port": 993, "mode": "ssl" | "starttls",
   "cafile": "ca.pem", "user": "...", "password": "...", "timeout": 30,
   "messages": [{"file": "/path/x.eml", "mailbox": "Pratiche.Citt&AOA-",
                 "flags": ["\\Seen", "$label1"],
                 "internaldate": "11-Mar-2025 09:41:21 +0100"}, ...],
   "searches": [{"mailbox": "INBOX", "criteria": ["UNSEEN"]}, ...]}

Mailbox names are as on the wire (modified UTF-7, the server's
delimiter). "timeout" (seconds; absent or null: none) bounds every socket
operation, so a server that never answers fails the run instead of
hanging it. For each message, in order, it writes one JSON line on stdout:

  {"file": ..., "mailbox": ..., "appenduid": N, "uid": N,
   "sha256": "<hex of the BODY[] bytes>", "size": N,
   "flags": [...], "internaldate": "..."}

then for each search (imaplib's uid("SEARCH", *criteria)) one line:

  {"mailbox": ..., "criteria": [...], "uids": [N, ...]}

Any failure is an exception on stderr and a non-zero exit.
"""

import hashlib
import imaplib
import json
import re
import ssl
import sys


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check(what, typ, data):
    if typ != "OK":
        raise RuntimeError("%s: %s %r" % (what, typ, data))


def connect(cfg):
    ctx = ssl.create_default_context(cafile=cfg["cafile"])
    timeout = cfg.get("timeout")
    if cfg["mode"] == "ssl":
        return imaplib.IMAP4_SSL(cfg["host"], cfg["port"], ssl_context=ctx, timeout=timeout)
    if cfg["mode"] != "starttls":
        raise ValueError("mode %r" % cfg["mode"])
    m = imaplib.IMAP4(cfg["host"], cfg["port"], timeout=timeout)
    if "STARTTLS" not in m.capabilities:
        raise RuntimeError("no STARTTLS in %r" % (m.capabilities,))
    check("STARTTLS", *m.starttls(ssl_context=ctx))
    return m


APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
UID = re.compile(rb"\bUID (\d+)")
FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
INTERNALDATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')


def fetch(m, uid):
    typ, data = m.uid("FETCH", str(uid), "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    check("UID FETCH %d" % uid, typ, data)
    # data: [(b'N (UID .. BODY[] {size}', literal), b' FLAGS (..))'] with the
    # items before and after the literal in the server's order.
    body, meta = None, b""
    for part in data:
        if isinstance(part, tuple):
            meta += part[0]
            if body is not None:
                raise RuntimeError("UID FETCH %d: two literals: %r" % (uid, data))
            body = part[1]
        elif part is not None:
            meta += part
    if body is None:
        raise RuntimeError("UID FETCH %d: no BODY[] in %r" % (uid, data))
    got = {}
    for name, rx in (("uid", UID), ("flags", FLAGS), ("internaldate", INTERNALDATE)):
        mo = rx.search(meta)
        if mo is None:
            raise RuntimeError("UID FETCH %d: no %s in %r" % (uid, name, meta))
        got[name] = mo.group(1).decode("ascii")
    return body, int(got["uid"]), got["flags"].split(), got["internaldate"]


def main():
    cfg = json.load(sys.stdin)
    m = connect(cfg)
    check("LOGIN", *m.login(cfg["user"], cfg["password"]))

    msgs = cfg.get("messages") or []
    for mbox in sorted({x["mailbox"] for x in msgs}):
        if mbox.upper() == "INBOX":
            continue
        typ, data = m.create(quote(mbox))
        if typ != "OK" and b"[ALREADYEXISTS]" not in b"".join(data):
            raise RuntimeError("CREATE %s: %s %r" % (mbox, typ, data))

    uids = []
    for x in msgs:
        with open(x["file"], "rb") as f:
            body = f.read()
        flags = "(" + " ".join(x["flags"]) + ")" if x["flags"] else None
        typ, data = m.append(quote(x["mailbox"]), flags, '"' + x["internaldate"] + '"', body)
        check("APPEND %s" % x["file"], typ, data)
        mo = APPENDUID.search(b"".join(data))
        if mo is None:
            raise RuntimeError("APPEND %s: no APPENDUID in %r" % (x["file"], data))
        uids.append(int(mo.group(2)))

    selected = None
    for x, uid in zip(msgs, uids):
        if x["mailbox"] != selected:
            check("SELECT %s" % x["mailbox"], *m.select(quote(x["mailbox"])))
            selected = x["mailbox"]
        body, fuid, flags, date = fetch(m, uid)
        print(json.dumps({
            "file": x["file"], "mailbox": x["mailbox"], "appenduid": uid, "uid": fuid,
            "sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
            "flags": flags, "internaldate": date,
        }), flush=True)

    for x in cfg.get("searches") or []:
        if x["mailbox"] != selected:
            check("SELECT %s" % x["mailbox"], *m.select(quote(x["mailbox"])))
            selected = x["mailbox"]
        typ, data = m.uid("SEARCH", *x["criteria"])
        check("UID SEARCH %s" % " ".join(x["criteria"]), typ, data)
        uids = [int(n) for part in data if part for n in part.split()]
        print(json.dumps({"mailbox": x["mailbox"], "criteria": x["criteria"], "uids": uids}), flush=True)
    m.logout()


if __name__ == "__main__":
    main()
