#!/usr/bin/env python3
"""A small upres client using only the standard library.

    UPRES_URL=http://127.0.0.1:8080 python3 examples/python/client.py IMAGE [IMAGE...]

- upscale(): POST /api/v1/upscale with a multipart body (field `image` plus parameters)
- batch_upscale(): POST /api/v1/batch-upscale with several images and per-image `params`
- sign_path(): an imgproxy-style signed transform path (HMAC-SHA256, base64url, no padding)

Run as a script it uploads the images one by one and as a batch, fetches the stored result, and
builds a (signed, when UPRES_KEY/UPRES_SALT are set) transform URL for SOURCE (default
shop/cat.png). It prints one JSON summary on stdout.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.request
import uuid


def sign_path(path, key_hex, salt_hex):
    """`/<signature><path>` for a transform path starting with `/`."""
    mac = hmac.new(bytes.fromhex(key_hex), bytes.fromhex(salt_hex) + path.encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
    return f"/{signature}{path}"


def _multipart(images, fields):
    """A multipart/form-data body: `images` as `image` parts, `fields` as text parts."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for i, data in enumerate(images):
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        out += data + b"\r\n"
    for name, value in fields.items():
        out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode()
        out += str(value).encode() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _request(url, data=None, content_type=None):
    """(status, headers (case-insensitive), body); HTTP errors are answers too (JSON)."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def upscale(base, image, **fields):
    """Upscales one image. Returns (status, headers, body): the image, or a JSON error."""
    body, content_type = _multipart([image], fields)
    return _request(f"{base}/api/v1/upscale", body, content_type)


def batch_upscale(base, images, params=None, **fields):
    """Upscales several images; `params` is a list aligned with them (dicts or None)."""
    if params is not None:
        fields["params"] = json.dumps(params)
    body, content_type = _multipart(images, fields)
    status, _, answer = _request(f"{base}/api/v1/batch-upscale", body, content_type)
    return status, json.loads(answer)


def main():
    base = os.environ.get("UPRES_URL", "http://127.0.0.1:8080").rstrip("/")
    paths = sys.argv[1:] or ["samples/shop/cat.png"]
    images = [open(p, "rb").read() for p in paths]
    summary = {}

    status, _, body = _request(f"{base}/api/v1/model-info")
    summary["models"] = [m["id"] for m in json.loads(body)["models"]] if status == 200 else status

    status, headers, body = upscale(base, images[0], scale=4, format="png")
    location = headers.get("Location")
    summary["upscale"] = {"status": status, "bytes": len(body), "etag": headers.get("ETag"),
                          "model": headers.get("X-Upres-Model"), "location": location}
    if status == 200:
        again, _, stored = _request(base + location)
        summary["stored"] = {"status": again, "same": stored == body}

    # Per-image parameters: the first at x2, the rest with the shared defaults.
    status, answer = batch_upscale(base, images, params=[{"scale": 2}], format="webp")
    summary["batch"] = {"status": status, "results": answer.get("results", answer)}

    path = "/x2/format=png/" + os.environ.get("SOURCE", "shop/cat.png")
    key, salt = os.environ.get("UPRES_KEY"), os.environ.get("UPRES_SALT")
    url = sign_path(path, key, salt) if key and salt else path
    status, _, body = _request(base + url)
    summary["transform"] = {"url": url, "status": status, "bytes": len(body)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
