"""Independent safetensors writer/reader for cross-checking the C++ implementation.

Written from the format spec with struct + json only (no safetensors package):
8-byte little-endian header length N, N bytes of JSON, then the data section.

  st_cross.py write OUT.safetensors EXPECTED.json   # tensors -> file, plus their raw bytes as hex
  st_cross.py check IN.safetensors EXPECTED.json    # parse file, compare with EXPECTED (from the C++ side)
"""
import json
import struct
import sys

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


def raw_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def finite_sum(t):
    return float(torch.nan_to_num(t.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0).sum())


def make_tensors():
    g = torch.Generator().manual_seed(1234)
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1e-42, 65504.0, -1.5])
    ts = {}
    ts["model.embed_tokens.weight"] = torch.randn(7, 5, generator=g)
    ts["layers.0.f16"] = torch.cat([torch.randn(9, generator=g), specials]).to(torch.float16).reshape(17)
    ts["layers.0.bf16"] = torch.cat([torch.randn(11, generator=g), specials]).to(torch.bfloat16).reshape(19, 1)
    ts["f64"] = torch.randn(2, 3, generator=g, dtype=torch.float64)
    ts["i64"] = torch.tensor([[-(2**63), 2**63 - 1, 0], [1, -1, 123456789012]], dtype=torch.int64)
    ts["i32"] = torch.randint(-2**31, 2**31 - 1, (4,), generator=g, dtype=torch.int32)
    ts["i16"] = torch.tensor([-32768, 32767, 5], dtype=torch.int16)
    # 3 bytes: everything after it sits at an odd offset, which the reader must cope with.
    ts["a_u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    ts["i8"] = torch.tensor([-128, 127, 0, 1, 2], dtype=torch.int8)
    ts["mask"] = torch.tensor([True, False, True])
    ts["scalar"] = torch.tensor(3.25)
    ts["empty"] = torch.zeros(0, 4)
    return ts


def write(out_path, expected_path):
    ts = make_tensors()
    header = {"__metadata__": {"format": "pt", "note": "written by st_cross.py"}}
    data = b""
    # Deliberately not sorted by name, and the header is not padded: both are legal.
    for name, t in ts.items():
        b = raw_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    hjson = json.dumps(header).encode("utf-8")
    with open(out_path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        f.write(data)
    expected = {"metadata": header["__metadata__"], "tensors": {}}
    for name, t in ts.items():
        expected["tensors"][name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "hex": raw_bytes(t).hex(),
                                     "sum": finite_sum(t)}
    with open(expected_path, "w") as f:
        json.dump(expected, f)


def check(in_path, expected_path):
    with open(in_path, "rb") as f:
        blob = f.read()
    with open(expected_path) as f:
        expected = json.load(f)
    errors = []
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    if (8 + n) % 8 != 0:
        errors.append("data section starts at %d, not a multiple of 8" % (8 + n))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    if meta != expected["metadata"]:
        errors.append("metadata %r != %r" % (meta, expected["metadata"]))
    if set(header) != set(expected["tensors"]):
        errors.append("names %r != %r" % (sorted(header), sorted(expected["tensors"])))
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    pos = 0
    for b, e in spans:
        if b != pos:
            errors.append("gap or overlap at %d (expected %d)" % (b, pos))
        pos = e
    if pos != len(data):
        errors.append("data section is %d bytes, tensors cover %d" % (len(data), pos))
    for name, info in header.items():
        exp = expected["tensors"].get(name)
        if exp is None:
            continue
        b, e = info["data_offsets"]
        raw = data[b:e]
        if info["dtype"] != exp["dtype"] or info["shape"] != exp["shape"]:
            errors.append("%s: %s%r != %s%r" % (name, info["dtype"], info["shape"], exp["dtype"], exp["shape"]))
            continue
        if raw.hex() != exp["hex"]:
            errors.append("%s: bytes differ" % name)
            continue
        dt = DTYPES[info["dtype"]]
        t = torch.frombuffer(bytearray(raw), dtype=dt) if raw else torch.empty(0, dtype=dt)
        t = t.reshape(info["shape"])
        s = finite_sum(t)
        if abs(s - exp["sum"]) > 1e-9 * max(1.0, abs(s)):
            errors.append("%s: sum %r != %r" % (name, s, exp["sum"]))
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print("OK %d tensors" % len(header))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    (write if sys.argv[1] == "write" else check)(sys.argv[2], sys.argv[3])
