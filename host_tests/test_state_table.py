"""The README's guard table is the code's: every (mode, reason) row is a
branch of guard.update() / Guard.decide_mode(), and every reason the code
can publish has its row. Read from the source, so a new branch without a
row (or a row without a branch) fails here."""
import re

from conftest import ROOT

RUN_MODES = "charge / discharge / idle"


def readme_rows():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Guard (`firmware/v2g/guard.py`)"):]
    section = section[:section.index("\n### ", 5)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("mode", "---"):
            continue
        rows.append((cells[0], cells[1]))
    return rows


def code_pairs():
    """(mode, reason) for every branch: fault/hold from update(), the rest
    from decide_mode(); the request's reasons are one row (see below)."""
    src = (ROOT / "firmware" / "v2g" / "guard.py").read_text()
    update = src[src.index("    def update("):src.index("    def _set(")]
    decide = src[src.index("    def decide_mode("):src.index("    def _taper(")]
    pairs = {(st.lower(), r) for st, r in re.findall(r'self\._set\((FAULT|HOLD), "(\w+)",', update)}
    if re.search(r'self\._set\(HOLD, "vehicle_" \+ vehicle\.state', update):
        pairs.add(("hold", "vehicle_<state>"))
    init = src[src.index("    def __init__("):src.index("    def pause(")]
    pairs.add(("hold", re.search(r'self\.reason = "(\w+)"', init).group(1)))
    for mode, r in re.findall(r'mode, reason = "(\w+)", "(\w+)"', decide):
        # published as decide_mode says, whatever state update() holds it in
        pairs = {p for p in pairs if p[1] != r} | {(mode, r)}
    for r in re.findall(r'^\s+reason = "(\w+)"', decide, re.M):
        pairs.add((RUN_MODES, r))
    assert "reason = why" in decide  # run: the request's own reason
    return pairs


def request_reasons():
    """Every reason a request can carry: the owner's mode, a dispatch, no
    clock (control.py) and the plan's segment reasons (plan.py)."""
    ctrl = (ROOT / "firmware" / "v2g" / "control.py").read_text()
    req = ctrl[ctrl.index("    def _request("):ctrl.index("    # --- one tick")]
    reasons = set(re.findall(r'return [^\n]*?, "(\w+)", ', req))
    reasons.discard("soc_unknown")  # no SoC: the guard holds first, never run with it
    plan = (ROOT / "firmware" / "v2g" / "plan.py").read_text()
    reasons |= set(re.findall(r'(?:\bwhy = |charge\(\w+, \w+, |, \w+, )"(\w+)"', plan))
    return reasons


def test_every_branch_has_its_row_and_every_row_its_branch():
    rows = readme_rows()
    readme = set()
    request_row = None
    for mode, reason in rows:
        if reason.startswith("the request's"):
            assert mode == RUN_MODES
            request_row = set(re.findall(r"`(\w+)`", reason))
            continue
        readme.add((mode, re.match(r"`([\w<>]+)`", reason).group(1)))
    assert len(readme) + 1 == len(rows), "a row twice"
    assert readme == code_pairs()
    assert request_row == request_reasons()


def test_the_table_test_reads_the_code_it_claims_to():
    # the extraction itself: the code has at least the branches the guard is
    # known for, so an empty regex match cannot pass as "no rows"
    pairs = code_pairs()
    assert {("fault", "link_lost"), ("hold", "paused"), ("idle", "stopped"),
            (RUN_MODES, "reserve_reached")} <= pairs
    assert {"dispatch", "charge_now", "mode_idle", "plan_idle", "peak_export"} <= request_reasons()
