# Bracket depth of a JSON text, checked before json.loads: json.loads builds
# one list or dict per level and recurses, so a few KB of "[" exhaust a
# board's heap (or the C stack) before any validator sees the value.
# Allocates nothing for bytes input.


def too_deep(text, max_depth):
    """Bracket depth outside strings beyond max_depth?"""
    if isinstance(text, str):
        text = text.encode()
    depth = 0
    in_str = False
    esc = False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:  # quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > max_depth:
                return True
        elif c == 0x5D or c == 0x7D:
            depth -= 1
    return False
