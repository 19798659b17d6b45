#!/usr/bin/env python3
"""Opens a page in headless Chromium and prints its DOM once the page's
JavaScript has rendered live figures, driving the browser over the
DevTools protocol on a pipe (--remote-debugging-pipe: NUL-separated JSON on
fds 3 and 4). Standard library only.

    live_dom.py CHROMIUM URL LANG SCREENSHOT.png TIMEOUT_S

With LOGIN_USER, LOGIN_PASSWORD and LOGIN_CODE in the environment, the
page's login form is filled and sent once it shows. With WAIT_FOR (a
JavaScript expression), that expression must also hold, and the
throughput may be 0 (the traffic may be over). With ACTION (JavaScript),
it is run after the first frame, and again each second until WAIT_FOR
holds (a search typed and sent, until it finds).

"Live" means: the body's data-frames (counted by the page per server-sent
frame) is at least 2 and the throughput figure (#tps) holds a number
above 0. It waits on that condition, polling the DOM; exit 1 with the last
state if it does not hold within TIMEOUT_S.
"""

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, chromium, lang):
        self.profile = tempfile.mkdtemp(prefix="switchyard-chromium-")
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()
        # Out of the way of 3 and 4 before they are placed there.
        cmd_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
        out_w = fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)

        def place():
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--user-data-dir=" + self.profile,
                "--lang=" + lang,
                "--accept-lang=" + lang,
                "--window-size=1400,1800",
                "about:blank",
            ],
            preexec_fn=place,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, LANG=lang.replace("-", "_") + ".UTF-8", LANGUAGE=lang.replace("-", "_")),
        )
        os.close(cmd_r)
        os.close(out_w)
        self.buf = b""
        self.next_id = 0

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        want = self.next_id
        while True:
            reply = self.read()
            if reply.get("id") == want:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.out_r, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self):
        try:
            os.write(self.cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


STATE = """JSON.stringify({
  login: getComputedStyle(document.getElementById('login')).display !== 'none',
  frames: Number(document.body.dataset.frames || 0),
  tps: (document.getElementById('tps') || {}).textContent || '',
  lang: document.documentElement.lang,
})"""


def main():
    chromium, url, lang, shot, limit = sys.argv[1:6]
    b = Browser(chromium, lang)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        # The page's language as the browser would announce it.
        b.send("Emulation.setLocaleOverride", {"locale": lang}, session)
        b.send("Network.enable", {}, session)
        b.send("Network.setUserAgentOverride", {"userAgent": "switchyard-test", "acceptLanguage": lang}, session)
        b.send("Page.navigate", {"url": url}, session)
        deadline = time.monotonic() + float(limit)
        state = {}
        login = [os.environ.get(k) for k in ("LOGIN_USER", "LOGIN_PASSWORD", "LOGIN_CODE")]
        logged_in = False
        acted = 0.0
        while time.monotonic() < deadline:
            r = b.send("Runtime.evaluate", {"expression": STATE, "returnByValue": True}, session)
            try:
                state = json.loads(r["result"]["value"])
            except (KeyError, TypeError, ValueError):
                state = {}
            if state.get("login") and all(login) and not logged_in:
                fill = "".join(
                    f"document.getElementById({json.dumps(i)}).value = {json.dumps(v)};"
                    for i, v in zip(("login-user", "login-password", "login-code"), login)
                )
                fill += "document.getElementById('login-form').requestSubmit(); true"
                b.send("Runtime.evaluate", {"expression": fill}, session)
                logged_in = True
            action = os.environ.get("ACTION")
            if action and state.get("frames", 0) >= 1 and time.monotonic() - acted >= 1.0:
                b.send("Runtime.evaluate", {"expression": action}, session)
                acted = time.monotonic()
            tps = state.get("tps", "").replace(",", "")
            wait_for = os.environ.get("WAIT_FOR")
            if wait_for:
                r = b.send("Runtime.evaluate", {"expression": wait_for, "returnByValue": True}, session)
                extra = r.get("result", {}).get("value") is True
                if state.get("frames", 0) >= 2 and extra:
                    break
            elif state.get("frames", 0) >= 2 and tps.isdigit() and int(tps) > 0:
                break
            time.sleep(0.1)
        else:
            print(f"not live within {limit} s: {state}", file=sys.stderr)
            return 1
        png = b.send("Page.captureScreenshot", {"format": "png"}, session)
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png["data"]))
        dom = b.send(
            "Runtime.evaluate",
            {"expression": "document.documentElement.outerHTML", "returnByValue": True},
            session,
        )
        print(dom["result"]["value"])
        return 0
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
