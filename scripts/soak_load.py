"""Paced load for scripts/soak.sh: `rate` requests per second for `seconds`, spread over
threads with persistent connections, a mix of what real clients send (mostly one-image
.npy predictions, some base64 JSON predictions and rankings) and of client mistakes
(unknown model names, broken JSON, NaN tensors, a decompression-bomb header). Samples
the server's RSS every `sample` seconds. Writes one JSON document to stdout.

    python soak_load.py URL MODEL PID RATE SECONDS NPY_FILE PNG_FILE
"""

import base64
import http.client
import json
import random
import struct
import sys
import threading
import time
import urllib.parse
import zlib

url, model, pid, rate, seconds, npy_file, png_file = sys.argv[1:8]
rate, seconds = float(rate), float(seconds)
sample = 10.0
host = urllib.parse.urlparse(url)
npy = open(npy_file, "rb").read()
png_b64 = base64.b64encode(open(png_file, "rb").read()).decode()
nan_npy = npy[: len(npy) - 4] + struct.pack("<f", float("nan"))


def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


bomb = base64.b64encode(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", 8192, 8192, 16, 6, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(b"\0" * 65536))
).decode()

predict = f"/v1/models/{model}/predict"
KINDS = [
    # (weight, name, method, path, content type, body, expected status)
    (80, "npy", "POST", predict, "application/x-npy", npy, 200),
    (8, "json", "POST", predict, "application/json", json.dumps({"images": [png_b64]}).encode(), 200),
    (4, "rank", "POST", f"/v1/models/{model}/rank", "application/json",
     json.dumps({"images": [png_b64, png_b64], "objective": {"maximize_roi": "V1v"}, "top_k": 1}).encode(), None),
    (2, "unknown_model", "POST", "/v1/models/{rand}/predict", "application/json", b"{}", 404),
    (2, "bad_json", "POST", predict, "application/json", b"{not json", 400),
    (2, "nan", "POST", predict, "application/x-npy", nan_npy, 422),
    (2, "bomb", "POST", predict, "application/json", json.dumps({"images": [bomb]}).encode(), 422),
]
weights = [k[0] for k in KINDS]

lock = threading.Lock()
counts = {}
latencies = []
errors = []


def worker(n_threads, stop_at):
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    interval = n_threads / rate
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if next_at > now:
            time.sleep(next_at - now)
        next_at += interval
        _, name, method, path, ctype, body, want = random.choices(KINDS, weights)[0]
        path = path.replace("{rand}", f"ghost-{random.randrange(1 << 30)}")
        t = time.monotonic()
        try:
            conn.request(method, path, body=body, headers={"content-type": ctype, "accept": "application/x-npy"})
            r = conn.getresponse()
            r.read()
            status = r.status
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        except Exception as e:  # a connection error is what the soak looks for
            status = f"error:{type(e).__name__}"
            conn.close()
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        took = time.monotonic() - t
        with lock:
            key = f"{name}:{status}"
            counts[key] = counts.get(key, 0) + 1
            if name == "npy" and status == 200:
                latencies.append(took)
            if want is not None and status != want or isinstance(status, str) or (isinstance(status, int) and status >= 500):
                errors.append({"t": round(t, 3), "kind": name, "status": status})


def rss_mb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


n_threads = max(1, min(16, int(rate // 50) + 1))
start = time.monotonic()
stop_at = start + seconds
threads = [threading.Thread(target=worker, args=(n_threads, stop_at), daemon=True) for _ in range(n_threads)]
for th in threads:
    th.start()
rss = [(0.0, rss_mb())]
while time.monotonic() < stop_at:
    time.sleep(min(sample, max(0.0, stop_at - time.monotonic())))
    rss.append((round(time.monotonic() - start, 1), rss_mb()))
for th in threads:
    th.join()
latencies.sort()
pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3 if latencies else None
total = sum(counts.values())
print(json.dumps({
    "requests": total,
    "seconds": round(time.monotonic() - start, 1),
    "rate_asked": rate,
    "rate_done": total / seconds,
    "threads": n_threads,
    "counts": dict(sorted(counts.items())),
    "unexpected": len(errors),
    "first_unexpected": errors[:20],
    "npy_p50_ms": pct(0.5),
    "npy_p99_ms": pct(0.99),
    "rss_mb": rss,
}))
