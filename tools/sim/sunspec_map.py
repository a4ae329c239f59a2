"""A SunSpec register map laid out from pysunspec2's model definitions.

Nothing about a model's layout is written down here: every offset, length and
type comes from the model JSON that ships with pysunspec2 (the same files the
SunSpec Alliance publishes), walked in order, sub-groups included. So the
simulated inverter follows the published layouts exactly, and a model revision
is picked up by upgrading pysunspec2, not by editing tables.

Point names are paths as pysunspec2 nests them: "W", "PFWInj.PF" (a plain
sub-group) and "Ctl[0].DbOf" (instance 0 of a repeating group, whose count
comes from a point such as NCtl). `addr_of(711, "Ctl.DbOf", index=0)` spells the
same point with the index apart.

The map holds raw 16-bit registers. Every point starts "not implemented" (the
SunSpec sentinel for its type); the simulator sets the ones it implements.
Points in `omit_points` stay not implemented whatever the simulator sets, so a
test can take away e.g. 713 SoH and see how the controller copes.
"""

import json
import os
import struct
from dataclasses import dataclass

_SUNS = (0x5375, 0x6E53)  # 'SunS'
_END_MODEL_ID = 0xFFFF

# type -> (bits, signed, "not implemented" raw pattern). Source: SunSpec model
# specification, as pysunspec2's mb.py implements it. acc* and pad use 0.
_INT_TYPES = {
    "int16": (16, True, 0x8000),
    "sunssf": (16, True, 0x8000),
    "uint16": (16, False, 0xFFFF),
    "count": (16, False, 0xFFFF),
    "enum16": (16, False, 0xFFFF),
    "bitfield16": (16, False, 0xFFFF),
    "acc16": (16, False, 0),
    "pad": (16, False, 0),
    "int32": (32, True, 0x80000000),
    "uint32": (32, False, 0xFFFFFFFF),
    "enum32": (32, False, 0xFFFFFFFF),
    "bitfield32": (32, False, 0xFFFFFFFF),
    "acc32": (32, False, 0),
    "ipaddr": (32, False, 0),
    "int64": (64, True, 0x8000000000000000),
    "uint64": (64, False, 0xFFFFFFFFFFFFFFFF),
    "acc64": (64, False, 0),
}
_FLOAT_TYPES = {"float32": (">f", 0x7FC00000), "float64": (">d", 0x7FF8000000000000)}
# Types where the sentinel is also an ordinary value (an accumulator at 0):
# get() returns the number rather than None.
_ZERO_IS_VALUE = {"acc16", "acc32", "acc64", "pad", "ipaddr"}


def default_models_dir():
    """The JSON model definitions installed with pysunspec2."""
    import sunspec2

    return os.path.join(os.path.dirname(sunspec2.__file__), "models", "json")


def load_model_def(model_id, models_dir=None):
    path = os.path.join(models_dir or default_models_dir(), "model_%d.json" % model_id)
    with open(path) as f:
        return json.load(f)


@dataclass(frozen=True)
class Point:
    model_id: int
    name: str  # path inside the model, e.g. "W", "PFWInj.PF", "Ctl[0].DbOf"
    type: str
    addr: int  # absolute Modbus PDU address of the first register
    regs: int
    sf: object  # name of the scale-factor point (same model), an int, or None
    writable: bool
    symbols: tuple = ()  # (name, value) pairs of an enum or bitfield

    @property
    def bits(self):
        return self.regs * 16


class SunSpecMap:
    def __init__(self, base_addr=40000, models=(1, 701, 702, 704, 713, 715, 711),
                 omit_points=(), group_counts=None, models_dir=None):
        if models and models[0] != 1:
            raise ValueError("the first SunSpec model must be 1 (common)")
        if len(set(models)) != len(models):
            raise ValueError("each model may appear once in this map")
        self.start = base_addr
        self.omit_points = set(omit_points)
        self.on_write = None  # callable(addr, values) after a bus write landed
        self._group_counts = dict(group_counts or {})
        self._points = {}  # (model_id, name) -> Point
        self._repeating = {}  # model_id -> set of repeating group paths ("Ctl")
        self._model_addr = {}  # model_id -> address of its ID register
        self._model_len = {}  # model_id -> L
        self._regs = list(_SUNS)
        addr = base_addr + 2
        for model_id in models:
            addr = self._add_model(model_id, addr, load_model_def(model_id, models_dir))
        self._regs += [_END_MODEL_ID, 0]
        self.end = addr + 2  # one past the last register
        self._owner = [None] * len(self._regs)  # register index -> Point
        for point in self._points.values():
            i = self._index(point.addr)
            self._owner[i:i + point.regs] = [point] * point.regs
        for key in self.omit_points:
            if key not in self._points:
                raise KeyError("omit_points names an unknown point: %r" % (key,))

    # ---- layout -------------------------------------------------------------

    def _add_model(self, model_id, addr, model_def):
        gdef = model_def["group"]
        self._model_addr[model_id] = addr
        self._repeating[model_id] = set()
        counts = {}  # count point name -> instances, filled while walking
        end = self._walk(model_id, gdef, "", "", addr, counts)
        length = end - addr - 2
        fixed_len = self._point_def(gdef, "L").get("value")
        if fixed_len is not None and fixed_len != length:
            raise ValueError("model %d: laid out L=%d, its definition says %d"
                             % (model_id, length, fixed_len))
        self._model_len[model_id] = length
        self._regs += [0] * (end - addr)
        for point in self._iter_model(model_id):
            self._fill_raw(point, self._unimpl_raw(point))
        self._store_int(self._points[(model_id, "ID")], model_id)
        self._store_int(self._points[(model_id, "L")], length)
        for name, count in counts.items():
            self._store_int(self._points[(model_id, name)], count)
        return end

    @staticmethod
    def _point_def(gdef, name):
        for pdef in gdef.get("points", ()):
            if pdef["name"] == name:
                return pdef
        raise KeyError(name)

    def _walk(self, model_id, gdef, prefix, plain_prefix, addr, counts):
        """Lay out one group's points then its sub-groups; return the next address.

        `prefix` carries instance indices ("Crv[1]."), `plain_prefix` does not
        ("Crv."); the latter records which groups repeat, for addr_of(index=).
        """
        local_names = {pdef["name"] for pdef in gdef.get("points", ())}
        for pdef in gdef.get("points", ()):
            name = prefix + pdef["name"]
            sf = pdef.get("sf")
            if isinstance(sf, str):
                try:
                    sf = int(sf)
                except ValueError:
                    # pysunspec2's rule: the SF point of the same group, else top level.
                    sf = prefix + sf if sf in local_names else sf
            symbols = tuple((sym["name"], sym["value"]) for sym in pdef.get("symbols", ()))
            point = Point(model_id, name, pdef["type"], addr, int(pdef["size"]), sf,
                          pdef.get("access", "R") == "RW", symbols)
            self._points[(model_id, name)] = point
            addr += point.regs
        for sub in gdef.get("groups", ()):
            plain = plain_prefix + sub["name"]
            if "count" not in sub:
                addr = self._walk(model_id, sub, prefix + sub["name"] + ".", plain + ".", addr, counts)
                continue
            self._repeating[model_id].add(plain)
            count = self._group_count(model_id, sub, counts)
            for i in range(count):
                addr = self._walk(model_id, sub, "%s%s[%d]." % (prefix, sub["name"], i),
                                  plain + ".", addr, counts)
        return addr

    def _group_count(self, model_id, gdef, counts):
        wanted = self._group_counts.get(model_id, {}).get(gdef["name"])
        count = gdef["count"]
        if isinstance(count, int) or (isinstance(count, str) and count.isdigit()):
            # A fixed count; 0 means "repeat to fill L" in legacy models.
            return int(count) if wanted is None else wanted
        # The count lives in a top-level point (e.g. NCtl); default one instance.
        wanted = 1 if wanted is None else wanted
        if counts.setdefault(count, wanted) != wanted:
            raise ValueError("model %d: groups sharing %s want different counts" % (model_id, count))
        return wanted

    def _iter_model(self, model_id):
        return (p for (m, _), p in self._points.items() if m == model_id)

    # ---- raw register access ------------------------------------------------

    def _index(self, addr):
        return addr - self.start

    def _fill_raw(self, point, raw):
        i = self._index(point.addr)
        for k in range(point.regs):
            self._regs[i + k] = (raw >> (16 * (point.regs - 1 - k))) & 0xFFFF

    def _load_raw(self, point):
        i = self._index(point.addr)
        raw = 0
        for reg in self._regs[i:i + point.regs]:
            raw = (raw << 16) | reg
        return raw

    @staticmethod
    def _unimpl_raw(point):
        if point.type in _INT_TYPES:
            return _INT_TYPES[point.type][2]
        if point.type in _FLOAT_TYPES:
            return _FLOAT_TYPES[point.type][1]
        return 0  # string (all NUL), ipv6addr, eui48

    def _store_int(self, point, value):
        self._fill_raw(point, int(value) & ((1 << point.bits) - 1))

    def registers(self):
        """The whole map from `start`: 'SunS', the models, the end marker."""
        return list(self._regs)

    def read_regs(self, addr, count):
        i = self._index(addr)
        if i < 0 or count < 0 or i + count > len(self._regs):
            raise IndexError("registers %d..%d are outside the map" % (addr, addr + count - 1))
        return self._regs[i:i + count]

    def write_regs(self, addr, values):
        """A write from the bus: store the registers, then tell `on_write`."""
        self.read_regs(addr, len(values))  # bounds check
        i = self._index(addr)
        self._regs[i:i + len(values)] = [v & 0xFFFF for v in values]
        if self.on_write:
            self.on_write(addr, list(values))

    def points_at(self, addr, count):
        """The points overlapping registers addr..addr+count-1, in address order."""
        found = []
        for i in range(max(0, self._index(addr)), min(len(self._owner), self._index(addr + count))):
            point = self._owner[i]
            if point is not None and (not found or found[-1] is not point):
                found.append(point)
        return found

    def writable(self, addr, count):
        """True if every register in the range belongs to an implemented RW point."""
        covered = 0
        for point in self.points_at(addr, count):
            if not point.writable or (point.model_id, point.name) in self.omit_points:
                return False
            lo, hi = max(addr, point.addr), min(addr + count, point.addr + point.regs)
            covered += hi - lo
        return covered == count

    # ---- typed points -------------------------------------------------------

    def point(self, model_id, name, index=None):
        if index is not None:
            name = self._indexed_name(model_id, name, index)
        try:
            return self._points[(model_id, name)]
        except KeyError:
            raise KeyError("model %d has no point %r in this map" % (model_id, name)) from None

    def _indexed_name(self, model_id, name, index):
        indices = list(index) if isinstance(index, (tuple, list)) else [index]
        parts = name.split(".")
        out, plain = [], ""
        for part in parts[:-1]:
            plain = plain + part
            if plain in self._repeating.get(model_id, ()):
                if not indices:
                    raise KeyError("%r needs one index per repeating group" % name)
                part = "%s[%d]" % (part, indices.pop(0))
            out.append(part)
            plain += "."
        if indices:
            raise KeyError("too many indices for %r" % name)
        return ".".join(out + parts[-1:])

    def addr_of(self, model_id, point_name, index=None):
        return self.point(model_id, point_name, index).addr

    def model_addr(self, model_id):
        """Address of the model's ID register (L follows it)."""
        return self._model_addr[model_id]

    def model_len(self, model_id):
        return self._model_len[model_id]

    def points(self, model_id):
        return list(self._iter_model(model_id))

    def symbol(self, model_id, name, symbol):
        """The value of an enum symbol, or the bit number of a bitfield symbol."""
        for sym_name, value in self.point(model_id, name).symbols:
            if sym_name == symbol:
                return value
        raise KeyError("%d %s has no symbol %s" % (model_id, name, symbol))

    def has_model(self, model_id):
        return model_id in self._model_addr

    def is_omitted(self, model_id, name, index=None):
        return (model_id, self.point(model_id, name, index).name) in self.omit_points

    def set(self, model_id, name, value, index=None):
        """Store a raw (unscaled) value; a no-op for omitted points."""
        point = self.point(model_id, name, index)
        if (model_id, point.name) in self.omit_points:
            return
        self._fill_raw(point, self._encode(point, value))

    def clear(self, model_id, name, index=None):
        """Make a point read "not implemented" (a value the device lost)."""
        point = self.point(model_id, name, index)
        self._fill_raw(point, self._unimpl_raw(point))

    def get(self, model_id, name, index=None):
        """The raw value, or None when the point reads "not implemented"."""
        point = self.point(model_id, name, index)
        raw = self._load_raw(point)
        if point.type == "string":
            data = raw.to_bytes(point.regs * 2, "big")
            return None if data[:1] == b"\0" else data.rstrip(b"\0").decode("utf-8")
        if raw == self._unimpl_raw(point) and point.type not in _ZERO_IS_VALUE:
            return None
        if point.type in _FLOAT_TYPES:
            fmt = _FLOAT_TYPES[point.type][0]
            return struct.unpack(fmt, raw.to_bytes(point.regs * 2, "big"))[0]
        if point.type in _INT_TYPES:
            bits, signed, _ = _INT_TYPES[point.type]
            if signed and raw >= 1 << (bits - 1):
                raw -= 1 << bits
            return raw
        raise TypeError("no codec for SunSpec type %s" % point.type)

    def _encode(self, point, value):
        kind = point.type
        if kind == "string":
            data = str(value).encode("utf-8")
            if len(data) > point.regs * 2:
                raise ValueError("%s: %r is longer than %d bytes" % (point.name, value, point.regs * 2))
            return int.from_bytes(data.ljust(point.regs * 2, b"\0"), "big")
        if kind in _FLOAT_TYPES:
            data = struct.pack(_FLOAT_TYPES[kind][0], float(value))
            return int.from_bytes(data, "big")
        if kind not in _INT_TYPES:
            raise TypeError("no codec for SunSpec type %s" % kind)
        bits, signed, unimpl = _INT_TYPES[kind]
        value = int(value)
        if kind.startswith("acc"):
            return value % (1 << bits)  # accumulators roll over by definition
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        raw = value & ((1 << bits) - 1)
        if not lo <= value <= hi or (raw == unimpl and kind not in _ZERO_IS_VALUE):
            # The sentinel would read as "not implemented": refuse rather than lie.
            raise ValueError("%s %s: %d does not fit (or is the not-implemented value)"
                             % (point.name, kind, value))
        return raw

    # ---- scaled values ------------------------------------------------------

    def scale_factor(self, model_id, name, index=None):
        """The point's current scale factor (0 for points without one)."""
        point = self.point(model_id, name, index)
        if point.sf is None:
            return 0
        if isinstance(point.sf, int):
            return point.sf
        sf = self.get(model_id, point.sf)
        if sf is None:
            raise ValueError("%s: scale factor %s is not implemented" % (point.name, point.sf))
        return sf

    def set_scaled(self, model_id, name, value, index=None):
        """Store an engineering value (W, Hz, %) using the point's SF now in the map."""
        point = self.point(model_id, name, index)
        if (model_id, point.name) in self.omit_points or (model_id, point.sf) in self.omit_points:
            return  # an omitted SF leaves its points unscalable: not implemented
        sf = self.scale_factor(model_id, point.name)
        # multiply by an exact integer power where possible: 1.0 / 0.001 is 999.99...
        raw = value * 10 ** -sf if sf <= 0 else value / 10 ** sf
        self.set(model_id, point.name, round(raw))

    def get_scaled(self, model_id, name, index=None):
        raw = self.get(model_id, name, index)
        if raw is None:
            return None
        sf = self.scale_factor(model_id, name, index)
        return raw * 10 ** sf if sf >= 0 else raw / 10 ** -sf

    # ---- pymodbus ------------------------------------------------------------

    def sim_device(self, device_id, gate=None, strict_access=True):
        """A pymodbus SimDevice serving this map as holding registers.

        SimData addresses are PDU addresses as in requests, so base 0 works;
        only the deprecated ModbusSequentialDataBlock shifts by one. pymodbus
        keeps its own copy of the registers: the action refreshes it from the
        map on every read and routes every write through write_regs() (and so
        on_write). `gate(func_code, addr, count, is_write)` may return a
        pymodbus ExcCodes to answer with an exception instead. With
        strict_access, writes that touch read-only or omitted points get
        ILLEGAL_ADDRESS, as a real device answers.
        """
        from pymodbus.constants import ExcCodes
        from pymodbus.simulator import DataType, SimData, SimDevice

        async def action(func_code, start_address, address, count, registers, set_values):
            is_write = set_values is not None
            if gate is not None:
                code = gate(func_code, address, count, is_write)
                if code:
                    return code
            if is_write:
                if strict_access and not self.writable(address, len(set_values)):
                    return ExcCodes.ILLEGAL_ADDRESS
                self.write_regs(address, list(set_values))
                return None
            offset = address - start_address
            registers[offset:offset + count] = self.read_regs(address, count)
            return None

        block = SimData(address=self.start, values=self.registers(), datatype=DataType.REGISTERS)
        return SimDevice(id=device_id, simdata=[block], action=action)


__all__ = ["SunSpecMap", "Point", "load_model_def", "default_models_dir"]
