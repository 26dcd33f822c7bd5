#!/usr/bin/env python3
"""Write the checkpoint fixtures used by tests/checkpoint.rs into tests/fixtures/torch/.

Run from the repository root (needs torch >= 2 and numpy; CPU is enough):

    python3 scripts/make_torch_fixtures.py

Tensor values are deterministic (fixed seeds); legacy storage keys (torch uses memory addresses) and
the zip serialization id differ per run, so re-running rewrites every file. Total size ~50 KB.
What it writes:

Valid files, written by real ``torch.save`` (expected values in ``expected.json``):
  d2l_tiny_zip.pt       state_dict of a tiny d2l-shaped BERTModel (V=5, C=2, F=3, L=2, P=3): the same
                        key names and order as d2l's pretrained.params, including mlm.* and nsp.*;
                        torch's default zip container (with the BUILD of ``_metadata``).
  d2l_tiny_legacy.pt    the same state_dict, ``_use_new_zipfile_serialization=False`` (legacy
                        container: 5 pickles, then per storage an int64 LE element count + raw bytes).
  mixed_zip.pt          a dtype zoo: f32, f64, a transposed (non-contiguous) view, two views sharing
                        one storage (one with a storage offset), f16, bf16, an int64 buffer, a
                        Parameter (``_rebuild_parameter``), a tensor holding nan/inf, a 0-d scalar,
                        an empty tensor.
  mixed_legacy.pt       the same, legacy container.
  mixed_proto4.pt       the same, zip container, ``pickle_protocol=4`` (FRAME, SHORT_BINUNICODE,
                        STACK_GLOBAL, MEMOIZE).
  mixed_bigendian.pt    mixed_zip.pt rewritten with ``byteorder`` = "big" and every storage
                        byte-swapped; checked here with ``torch.load`` to give the same tensors.
  expected.json         {"files": {file: set}, "sets": {set: [{name, shape, dtype, values}]}}, tensors
                        in file order; values are Python ``repr`` strings of each element (exact
                        round trip, nan/inf included), row-major; see expected_entry.

Hostile files (tests assert a clean error naming the global / tensor and the file, and no effect):
  evil_os_system.pt     zip whose data.pkl holds GLOBAL 'os system' + REDUCE ('touch <PWNED>').
  evil_posix_system.pt  a bare protocol-2 pickle from Python's pickle module: posix.system REDUCE.
  evil_eval.pt          bare pickle: builtins.eval (fix_imports=False; else it reads '__builtin__').
  evil_popen.pt         bare pickle: subprocess.Popen(['touch', PWNED]) (fix_imports=False; else
                        protocol 2 rewrites it to 'commands Popen').
  evil_nested.pt        zip: a valid state dict whose second value is an os.system REDUCE.
  huge_numel.pt         zip: storage declares 10**12 float32 elements, 48 bytes present.
  bad_stride.pt         zip: tensor 'w' of size (4, 4), stride (4, 1) over a 12-element storage.
  bad_offset.pt         zip: tensor 'w' of size (3,) at storage offset 11 over 12 elements.
  not_a_tensor.pt       zip: state dict {'w': tensor, 'step': 3} (a non-tensor value).

PWNED = /tmp/nli-bert-fixture-pwned-5c1e0b (tests check that it was never created). Truncated
files are made by the tests themselves (every prefix of the valid fixtures must give an error).
"""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "torch")
PWNED = "/tmp/nli-bert-fixture-pwned-5c1e0b"


# ---------------------------------------------------------------- a tiny d2l-shaped model
class MultiHeadAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.W_q = nn.Linear(c, c)
        self.W_k = nn.Linear(c, c)
        self.W_v = nn.Linear(c, c)
        self.W_o = nn.Linear(c, c)


class AddNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)


class PositionWiseFFN(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.dense1 = nn.Linear(c, f)
        self.dense2 = nn.Linear(f, c)


class EncoderBlock(nn.Module):
    def __init__(self, c, f):
        super().__init__()
        self.attention = MultiHeadAttention(c)
        self.addnorm1 = AddNorm(c)
        self.ffn = PositionWiseFFN(c, f)
        self.addnorm2 = AddNorm(c)


class BERTEncoder(nn.Module):
    def __init__(self, v, c, f, layers, p):
        super().__init__()
        self.token_embedding = nn.Embedding(v, c)
        self.segment_embedding = nn.Embedding(2, c)
        self.blks = nn.Sequential()
        for i in range(layers):
            self.blks.add_module(str(i), EncoderBlock(c, f))
        self.pos_embedding = nn.Parameter(torch.randn(1, p, c))


class MaskLM(nn.Module):
    def __init__(self, v, c):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.LayerNorm(c), nn.Linear(c, v))


class NextSentencePred(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.output = nn.Linear(c, 2)


class BERTModel(nn.Module):
    def __init__(self, v, c, f, layers, p):
        super().__init__()
        self.encoder = BERTEncoder(v, c, f, layers, p)
        self.hidden = nn.Sequential(nn.Linear(c, c), nn.Tanh())
        self.mlm = MaskLM(v, c)
        self.nsp = NextSentencePred(c)


def d2l_tiny_state_dict():
    torch.manual_seed(0)
    model = BERTModel(v=5, c=2, f=3, layers=2, p=3)
    with torch.no_grad():
        for p in model.parameters():  # LayerNorms would otherwise be all ones / zeros
            p.add_(0.01 * torch.randn_like(p))
    return model.state_dict()


def mixed_state_dict():
    torch.manual_seed(1)
    sd = collections.OrderedDict()
    base = torch.randn(3, 4)
    sd["f32"] = base
    sd["f32_t"] = base.t()  # non-contiguous view of the same storage
    shared = torch.randn(10, dtype=torch.float64)
    sd["f64_head"] = shared[:4].view(2, 2)  # two views of one storage
    sd["f64_tail"] = shared[5:]  # storage offset 5
    sd["f16"] = torch.randn(5).half()
    sd["bf16"] = torch.randn(2, 3).bfloat16()
    sd["position_ids"] = torch.arange(6).unsqueeze(0)  # int64 buffer
    sd["param"] = nn.Parameter(torch.randn(2))
    sd["special"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45])
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["strided"] = torch.randn(4, 6)[::2, 1::3]  # strides (12, 3), offset 1
    return sd


def dtype_name(t):
    return str(t.dtype).replace("torch.", "")


def expected_entry(sd):
    """Values as strings, row-major: float64 and int64 as Python repr of the float64 value; float32,
    float16 and bfloat16 as the shortest repr that round-trips through float32 (numpy's), which is
    exact for all three since f16 and bf16 values are f32 values (parse as f32, then widen)."""
    out = []
    for k, t in sd.items():
        t = t.detach()
        if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
            vals = [repr(float(v)) if not np.isfinite(v) else str(v) for v in t.float().reshape(-1).numpy()]
        else:
            vals = [repr(float(x)) for x in t.reshape(-1).tolist()]
        out.append({"name": k, "shape": list(t.shape), "dtype": dtype_name(t), "values": vals})
    return out


# ---------------------------------------------------------------- hand-made torch-like pickles
class StorageRef:
    """A storage marker turned into a persistent id by TorchLikePickler."""

    def __init__(self, storage_type, key, numel):
        self.storage_type, self.key, self.numel = storage_type, key, numel


class TensorLike:
    """Pickles as REDUCE(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, {}))."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def write_zip(path, obj, storages, byteorder="little", prefix="archive"):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", buf.getvalue())
        z.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in storages.items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")


class Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def os_system_pickle():
    """GLOBAL 'os system' written by hand (Python's pickle would write 'posix system')."""
    cmd = f"touch {PWNED}".encode()
    return (b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(cmd)) + cmd + b"\x85R.")


def rewrite_zip_bigendian(src, dst, elem_sizes):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                key = info.filename.rsplit("/", 1)[1]
                size = elem_sizes[key]
                data = np.frombuffer(data, dtype=f"u{size}").byteswap().tobytes() if size > 1 else data
            zout.writestr(info, data)


def storage_elem_sizes(sd):
    """Element size of each zip storage key, in the order torch.save assigns keys (0, 1, ...)."""
    sizes, seen = {}, {}
    for t in sd.values():
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen[ptr] = str(len(seen))
            sizes[seen[ptr]] = t.element_size()
    return sizes


def main():
    os.makedirs(OUT, exist_ok=True)
    p = lambda name: os.path.join(OUT, name)  # noqa: E731
    expected = {"files": {}, "sets": {}}

    d2l = d2l_tiny_state_dict()
    torch.save(d2l, p("d2l_tiny_zip.pt"))
    torch.save(d2l, p("d2l_tiny_legacy.pt"), _use_new_zipfile_serialization=False)
    expected["sets"]["d2l_tiny"] = expected_entry(d2l)
    expected["files"]["d2l_tiny_zip.pt"] = expected["files"]["d2l_tiny_legacy.pt"] = "d2l_tiny"

    mixed = mixed_state_dict()
    expected["sets"]["mixed"] = expected_entry(mixed)
    torch.save(mixed, p("mixed_zip.pt"))
    torch.save(mixed, p("mixed_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(mixed, p("mixed_proto4.pt"), pickle_protocol=4)
    rewrite_zip_bigendian(p("mixed_zip.pt"), p("mixed_bigendian.pt"), storage_elem_sizes(mixed))
    for name in ["mixed_zip.pt", "mixed_legacy.pt", "mixed_proto4.pt", "mixed_bigendian.pt"]:
        expected["files"][name] = "mixed"
        # cross-check: torch reads back what we claim (the big-endian rewrite included)
        # (torch's own weights_only unpickler rejects FRAME, opcode 0x95, so protocol 4 needs False)
        back = torch.load(p(name), weights_only=name != "mixed_proto4.pt")
        assert list(back) == list(mixed), name
        for k in mixed:
            assert torch.equal(back[k].nan_to_num(), mixed[k].nan_to_num()), (name, k)
    for name in ["d2l_tiny_zip.pt", "d2l_tiny_legacy.pt"]:
        back = torch.load(p(name), weights_only=True)
        assert all(torch.equal(back[k], d2l[k]) for k in d2l), name

    with open(p("expected.json"), "w") as f:  # one line per tensor
        f.write('{"files": ' + json.dumps(expected["files"]) + ',\n"sets": {')
        for i, (set_name, tensors) in enumerate(expected["sets"].items()):
            f.write(("," if i else "") + f"\n{json.dumps(set_name)}: [\n")
            f.write(",\n".join(json.dumps(t, separators=(",", ":")) for t in tensors) + "]")
        f.write("}}\n")
    json.load(open(p("expected.json")))

    # ------------------------------------------------------------ hostile files
    evil_os = os_system_pickle()
    with zipfile.ZipFile(p("evil_os_system.pt"), "w") as z:
        z.writestr("archive/data.pkl", evil_os)
        z.writestr("archive/byteorder", "little")
    with open(p("evil_posix_system.pt"), "wb") as f:
        pickle.dump(Evil(os.system, (f"touch {PWNED}",)), f, protocol=2)
    with open(p("evil_eval.pt"), "wb") as f:
        pickle.dump(Evil(eval, (f"__import__('os').system('touch {PWNED}')",)), f, protocol=2, fix_imports=False)
    with open(p("evil_popen.pt"), "wb") as f:
        pickle.dump(Evil(subprocess.Popen, (["touch", PWNED],)), f, protocol=2, fix_imports=False)

    f32 = struct.pack("<12f", *range(12))
    fs = StorageRef(torch.FloatStorage, "0", 12)
    write_zip(
        p("evil_nested.pt"),
        collections.OrderedDict([("w", TensorLike(fs, 0, (12,), (1,))), ("x", Evil(os.system, (f"touch {PWNED}",)))]),
        {"0": f32},
    )

    big = StorageRef(torch.FloatStorage, "0", 10**12)
    write_zip(p("huge_numel.pt"), {"w": TensorLike(big, 0, (12,), (1,))}, {"0": f32})
    write_zip(p("bad_stride.pt"), {"w": TensorLike(fs, 0, (4, 4), (4, 1))}, {"0": f32})
    write_zip(p("bad_offset.pt"), {"w": TensorLike(fs, 11, (3,), (1,))}, {"0": f32})
    write_zip(p("not_a_tensor.pt"), {"w": TensorLike(fs, 0, (12,), (1,)), "step": 3}, {"0": f32})

    assert not os.path.exists(PWNED)
    total = sum(os.path.getsize(p(n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
