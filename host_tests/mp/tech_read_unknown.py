# test_tech.py: a technician asks tech.read() for a point that does not
# exist; prints "refused ..." with the helper's message. Run on the board
# (mpremote ... resume run), where `tech` is the firmware's REPL helper.
import tech

try:
    tech.read('999.X')
except ValueError as e:
    print('refused', e)
