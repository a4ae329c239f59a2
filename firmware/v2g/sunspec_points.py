# SunSpec points by name, with units, for the technician's read("701.W").
# Kept out of sunspec.py so the tables cost RAM only when a technician asks.
from v2g.sunspec import _M701_SF, _decode

# Units and scale factor points for read_point() (technician access).
POINTS = {
    701: {"St": (3, "enum16", None, ""), "InvSt": (4, "enum16", None, ""),
          "ConnSt": (5, "enum16", None, ""), "Alrm": (6, "bitfield32", None, ""),
          "W": (10, "int16", "W_SF", "W"), "VA": (11, "int16", "VA_SF", "VA"),
          "Var": (12, "int16", "Var_SF", "var"), "PF": (13, "int16", "PF_SF", ""),
          "A": (14, "int16", "A_SF", "A"), "LLV": (15, "uint16", "V_SF", "V"),
          "LNV": (16, "uint16", "V_SF", "V"), "Hz": (17, "uint32", "Hz_SF", "Hz"),
          "TotWhInj": (19, "uint64", "TotWh_SF", "Wh"), "TotWhAbs": (23, "uint64", "TotWh_SF", "Wh")},
    702: {"WMaxRtg": (2, "uint16", "W_SF", "W"), "WChaRteMaxRtg": (10, "uint16", "W_SF", "W"),
          "WDisChaRteMaxRtg": (11, "uint16", "W_SF", "W"), "WMax": (26, "uint16", "W_SF", "W")},
    704: {"WSetEna": (22, "enum16", None, ""), "WSetMod": (23, "enum16", None, ""),
          "WSet": (24, "int32", "WSet_SF", "W"), "WSetRvrt": (26, "int32", "WSet_SF", "W"),
          "WSetRvrtTms": (31, "uint32", None, "s"), "WSetRvrtRem": (33, "uint32", None, "s")},
    711: {"Ena": (2, "enum16", None, "")},
    713: {"WHRtg": (2, "uint16", "WH_SF", "Wh"), "WHAvail": (3, "uint16", "WH_SF", "Wh"),
          "SoC": (4, "uint16", "Pct_SF", "%"), "SoH": (5, "uint16", "Pct_SF", "%"),
          "Sta": (6, "enum16", None, "")},
    # 714's totals; the car's port is what refresh reads (SunSpecInverter.dc_port)
    714: {"PrtAlrms": (2, "bitfield32", None, ""), "NPrt": (4, "uint16", None, ""),
          "DCA": (5, "int16", "DCA_SF", "A"), "DCW": (6, "int16", "DCW_SF", "W"),
          "DCWhInj": (7, "uint64", "DCWH_SF", "Wh"), "DCWhAbs": (11, "uint64", "DCWH_SF", "Wh")},
    715: {"LocRemCtl": (2, "enum16", None, ""), "DERHb": (3, "uint32", None, ""),
          "ControllerHb": (5, "uint32", None, "")},
}
SF_POINTS = {
    701: _M701_SF,
    702: {"W_SF": 45},
    704: {"WSet_SF": 55},
    713: {"WH_SF": 7, "Pct_SF": 8},
    714: {"DCA_SF": 15, "DCV_SF": 16, "DCW_SF": 17, "DCWH_SF": 18},
}


def read_point(inv, name):
    """'701.W' -> (value, units) with the scale factor applied; value is
    None when the device reports "not implemented"."""
    try:
        mid_s, pname = name.split(".")
        mid = int(mid_s)
        off, typ, sfname, units = POINTS[mid][pname]
    except (ValueError, KeyError):
        raise ValueError("unknown point " + name)
    if mid not in inv.models:
        raise ValueError("model %d not on this device" % mid)
    n = {"int16": 1, "uint16": 1, "enum16": 1, "bitfield32": 2, "uint32": 2, "int32": 2, "uint64": 4}[typ]
    raw = _decode(inv._read(mid, off, n), 0, typ)
    if sfname is None:
        return raw, units
    sf = inv.sf.get((mid, sfname))
    if sf is None and mid in SF_POINTS and sfname in SF_POINTS[mid]:
        sf = _decode(inv._read(mid, SF_POINTS[mid][sfname], 1), 0, "sunssf")
    if raw is None or sf is None:
        return None, units
    return (raw * 10 ** sf if sf >= 0 else raw / 10 ** -sf), units


