"""The benchmark bodies, shared by bench/policies.sh, bench/webhooks.sh and bench/callgrind.sh.

Usage: python3 bench/bodies.py OUT_DIR [WEBHOOK_SECRET MESSAGES]
Writes OUT_DIR/order.json, a 1 KiB order that satisfies bench/order.schema.json; with a
Standard Webhooks secret (whsec_...), also OUT_DIR/event.json, a 1 KiB event, and
OUT_DIR/messages.txt, MESSAGES lines of "id timestamp signature" for it, each id distinct.
"""
import base64, hashlib, hmac, json, sys, time


def one_kib(doc):
    s = json.dumps(doc, separators=(",", ":"))
    doc["note"] = "x" * (1024 - len(s))
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == 1024, len(body)
    return body


out = sys.argv[1]
items = [{"sku": f"SKU-{i:04d}", "qty": i + 1} for i in range(24)]
open(f"{out}/order.json", "wb").write(one_kib({"customer": "acme-corp", "items": items, "note": ""}))
if len(sys.argv) > 2:
    secret, n = sys.argv[2], int(sys.argv[3])
    items = [{"sku": f"SKU-{i:04d}", "qty": i + 1} for i in range(20)]
    body = one_kib({"type": "order.created", "data": {"id": "ord_1", "items": items}, "note": ""})
    open(f"{out}/event.json", "wb").write(body)
    key = base64.b64decode(secret[len("whsec_"):])
    ts = str(int(time.time()))
    with open(f"{out}/messages.txt", "w") as f:
        for i in range(n):
            mid = f"msg_{i:08d}"
            sig = base64.b64encode(hmac.new(key, f"{mid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
            f.write(f"{mid} {ts} v1,{sig}\n")
