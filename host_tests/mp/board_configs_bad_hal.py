# test_board_configs.py: a HAL module with two wrong `machine` calls (a
# keyword UART does not take, a Pin constant that does not exist) that the
# type check against every port's stubs must catch. The test copies it to
# v2g/hal/bad.py of a scratch tree.
import machine


def build(rs):
    uart = machine.UART(rs["uart"], baudrate=9600, txpin=machine.Pin(rs["tx"]))
    de = machine.Pin(rs["de"], machine.Pin.OUTPUT)
    return uart, de
